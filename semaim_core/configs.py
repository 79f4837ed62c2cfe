"""Config names as the brief writes them: ``--config vitdet_semaim.py`` or ``upernet_semaim.py``
resolve against the framework's config folder; a path still works as a path."""
from __future__ import annotations

from pathlib import Path


def resolve_config(name: str, folder: Path) -> str:
    """``name`` if it is a file; else ``folder/name`` (".py" may be left out); else an error that
    lists the configs in ``folder``."""
    if Path(name).is_file():
        return name
    for candidate in (folder / name, folder / f"{name}.py"):
        if candidate.is_file():
            return str(candidate)
    known = sorted(p.name for p in folder.glob("*.py") if not p.name.startswith("_"))
    raise SystemExit(f"config {name!r} is neither a file nor one of the configs in {folder}: {', '.join(known)}")
