"""Config names as the brief writes them (``--config vitdet_semaim.py`` or ``upernet_semaim.py``
resolve against the framework's config folder; a path still works as a path), and the check that
a command-line override keeps each setting's kind, for detectron2's and mmengine's overrides alike."""
from __future__ import annotations

from pathlib import Path

from .errors import SettingError

_KINDS = ((bool, "true or false"), (int, "a whole number"), (float, "a number"))


def resolve_config(name: str, folder: Path) -> str:
    """``name`` if it is a file; else ``folder/name`` (".py" may be left out); else an error that
    lists the configs in ``folder``."""
    if Path(name).is_file():
        return name
    for candidate in (folder / name, folder / f"{name}.py"):
        if candidate.is_file():
            return str(candidate)
    known = sorted(p.name for p in folder.glob("*.py") if not p.name.startswith("_"))
    raise SettingError(f"config {name!r} is neither a file nor one of the configs in {folder}: {', '.join(known)}")


def check_override_kind(key: str, old, new):
    """An override must keep a flag a flag and a number a number (an int where a float stands is
    fine; None unsets any): ``train.max_iter=abc`` is named here, not by a TypeError deep inside the
    schedule."""
    if new is None:
        return
    for kind, words in _KINDS:
        if isinstance(old, kind):
            fits = isinstance(new, bool) if kind is bool else (
                isinstance(new, (int, float) if kind is float else int) and not isinstance(new, bool))
            if not fits:
                raise SettingError(f"{key}={new!r}: {key} takes {words} (the config has {old!r})")
            return
