"""One run per directory, and numbers that say where they came from.

``open_run`` is called by every trainer and evaluator (pretraining, cls, det, seg) before it touches
its output directory:

* a lock file (``.lock``, holding the owner's pid) keeps a second process out;
* temporary files of a write that was killed (``.<name>.tmp*``) are removed;
* the run's recipe is recorded in ``run.json``. A later start resumes or re-scores only when its
  recipe matches (settings that only say where to stop may change); otherwise it stops before
  touching anything and names each differing setting. A fresh start into a directory that
  holds another run is refused unless ``overwrite``, which clears the directory first.

``provenance`` describes a scored checkpoint for a metrics file: its path and content hash, the
suite's commit, and whatever the caller adds (iteration, dataset, number of images, config).
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import torch

from .files import atomic_write

LOCK, RECIPE, CHANGES = ".lock", "run.json", "recipe_changes.jsonl"
REPO = Path(__file__).resolve().parents[1]


class RunDirError(RuntimeError):
    """The output directory holds another run, is in use, or cannot be resumed as asked."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(folder: Path) -> Path:
    """Create ``folder/.lock`` holding this pid and host; a lock of a live process is an error, a
    stale one (its process on this host is gone) is taken over, and one from another host (another
    node or container, whose pids mean nothing here) is never taken."""
    path = folder / LOCK
    host = socket.gethostname()
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            text = path.read_text().split() if path.exists() else []
            owner = int(text[0]) if text and text[0].isdigit() else None
            owner_host = text[1] if len(text) > 1 else host  # a lock of an older version: this host
            if owner_host != host:
                raise RunDirError(f"{folder} is in use by process {owner} on host {owner_host} (lock file {path}): "
                                  "wait for it to end; if that run is gone, delete the lock file") from None
            if owner is not None and owner != os.getpid() and _alive(owner):
                raise RunDirError(f"{folder} is in use by process {owner} (lock file {path}): wait for it to end, "
                                  "or write to another directory") from None
            path.unlink(missing_ok=True)  # stale: its owner is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {host}")
        atexit.register(release_lock, folder)
        return path


def release_lock(folder: Path):
    path = Path(folder) / LOCK
    try:
        if path.read_text().split()[:1] == [str(os.getpid())]:
            path.unlink()
    except FileNotFoundError:
        pass


def remove_temp_files(folder: Path) -> list[str]:
    """Leftovers of a write that was killed: ``.<name>.tmp`` and ``.<name>.tmp-<pid>`` files."""
    removed = []
    for p in folder.iterdir():
        if p.is_file() and p.name.startswith(".") and ".tmp" in p.name and p.name != LOCK:
            p.unlink()
            removed.append(p.name)
    if removed:
        print(f"{folder}: removed {len(removed)} temporary files of an interrupted write: {removed[:4]}")
    return removed


def drop_rows_after(path: Path, key: str, last: int):
    """Remove JSON-lines rows whose ``key`` exceeds ``last``: rows a killed run logged after its last
    checkpoint, which the resumed run is about to log again. A torn last row (the run was killed
    while writing it) is dropped with a message; a torn row elsewhere is an error naming the line."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = []
    for n, line in enumerate(rows, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n < len(rows):
                raise RunDirError(f"{path}, line {n}, is not JSON ({line[:60]!r}): the metrics log was edited or "
                                  "damaged; repair or remove that line, then resume") from None
            print(f"{path}: dropping a torn last row (the run was stopped while writing it): {line[:60]!r}")
            continue
        if row[key] <= last:
            kept.append(line)
    if len(kept) != len(rows):
        atomic_write(path, lambda f: f.write("".join(line + "\n" for line in kept).encode()))


def drop_text_lines_after(path: Path, last: int):
    """The same for a plain-text log whose progress lines start ``step N/``: lines past step ``last``."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not ((m := re.match(r"step (\d+)/", line)) and int(m.group(1)) > last)]
    if len(kept) != len(lines):
        atomic_write(path, lambda f: f.write("".join(kept).encode()))


def recipe_differences(old: dict, new: dict, ignore=()) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in keys
            if k not in ignore and old.get(k) != new.get(k)]


def canonical(recipe: dict) -> dict:
    """The recipe as JSON would store it (tuples become lists), so comparisons are like for like."""
    return json.loads(json.dumps(recipe, default=str))


def open_run(folder: str | Path, recipe: dict, *, overwrite: bool = False, fresh: bool = False,
             stopping: tuple = (), flag: str = "--overwrite", allow_change: bool = False,
             change_flag: str | None = None) -> bool:
    """Claim ``folder`` for the run described by ``recipe``; returns True when it continues a run
    with the same recipe (resume or re-score), False when it starts anew.

    ``fresh``: the caller asked for a new run (e.g. ``--resume none``): a non-empty directory is
    then refused unless ``overwrite``. ``stopping``: recipe keys that may change between starts.
    ``allow_change``: continue with a changed recipe (e.g. a lower lr after a NaN), appending the
    changes to ``recipe_changes.jsonl`` so the run's history says what it trained with when."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    acquire_lock(folder)
    recipe = canonical(recipe)
    if overwrite:
        for p in folder.iterdir():
            if p.name != LOCK:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        print(f"{folder}: cleared for a new run ({flag})")
    remove_temp_files(folder)
    recorded = folder / RECIPE
    # a recipe alone (a start that failed before writing anything) holds no run yet
    content = [p.name for p in folder.iterdir() if p.name not in (LOCK, RECIPE)]
    if content and not overwrite:
        if fresh:
            raise RunDirError(f"{folder} already holds a run ({', '.join(sorted(content)[:5])}): a new run needs an "
                              f"empty directory. Choose another one, or pass {flag} to discard what is there")
        if not recorded.is_file():
            raise RunDirError(f"{folder} holds files ({', '.join(sorted(content)[:5])}) but no {RECIPE}: it is not a "
                              f"run of this version of the suite. Choose another directory, or pass {flag}")
        diffs = recipe_differences(json.loads(recorded.read_text()), recipe, ignore=stopping)
        if diffs and allow_change:
            with open(folder / CHANGES, "a") as f:
                f.write(json.dumps(dict(time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), changes=diffs)) + "\n")
            print(f"{folder}: continuing with a changed recipe (recorded in {CHANGES}):\n  " + "\n  ".join(diffs))
        elif diffs:
            raise RunDirError(f"{folder} holds a run with another recipe; continuing it would mix two experiments:\n  "
                              + "\n  ".join(diffs) + f"\nUse a new directory for the new recipe, or pass {flag} to "
                              "discard the old run" + (f"; to continue this run with the change on purpose (e.g. a "
                              f"lower lr after a NaN), pass {change_flag}: it is recorded in {CHANGES}"
                              if change_flag else ""))
    write_json_atomic(recorded, recipe)
    return bool(content) and not overwrite


def write_json_atomic(path: str | Path, record) -> Path:
    return atomic_write(path, lambda f: f.write(json.dumps(record, indent=2, allow_nan=False).encode()))


# ---------------------------------------------------------------------------- provenance
_DIGESTS: dict = {}


def file_digest(path: str | Path) -> str:
    """sha256 of a file's content (cached per path, size and modification time)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def with_input_digests(recipe: dict, keys) -> dict:
    """``recipe`` plus the sha256 of each input file it names under ``keys`` (as ``<key>.sha256``):
    a run is tied to the content of its encoder, init checkpoint or teacher, so another file copied
    over the same path is a recipe change, not a silent continuation."""
    out = dict(recipe)
    for key in keys:
        value = recipe.get(key)
        if isinstance(value, str) and value != "none" and Path(value).is_file():
            out[f"{key}.sha256"] = file_digest(value)
    return out


def file_list_digest(files: list[Path], root: Path) -> dict:
    """How many files, and a sha256 of their sorted names relative to ``root``: cheap, and any image
    added, removed or renamed between two starts changes it."""
    names = "\n".join(sorted(str(Path(f).relative_to(root)) for f in files))
    return dict(count=len(files), names_sha256=hashlib.sha256(names.encode()).hexdigest())


def suite_commit() -> str:
    """The suite's git commit (with "+dirty" for uncommitted changes), or "unknown" outside a checkout."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(checkpoint: str | Path | None, **facts) -> dict:
    """What a metrics file records about the number it holds: the scored checkpoint (path and
    sha256), the suite's commit, torch's CPU thread count (a CPU run's numbers depend on it), and
    ``facts`` (iteration or epoch, dataset, images, config)."""
    ckpt = None
    if checkpoint and Path(checkpoint).is_file():
        ckpt = dict(path=str(Path(checkpoint).resolve()), sha256=file_digest(checkpoint))
    elif checkpoint:
        ckpt = dict(path=str(checkpoint), sha256=None)
    return dict(checkpoint=ckpt, suite_commit=suite_commit(), torch_threads=torch.get_num_threads(), **facts)


def _source(record: dict):
    """What a metrics record scored: a checkpoint file (by content) or a run's in-training model."""
    p = record.get("provenance") or {}
    ckpt = p.get("checkpoint") or {}
    return ("checkpoint", ckpt["sha256"]) if ckpt.get("sha256") else ("run", p.get("run"))


def result_source(checkpoint: str | Path | None = None, run: str | None = None) -> tuple:
    """What a new result scores, as ``_source`` reads it back from its record: a checkpoint file
    (by content), or else the run's in-training model."""
    if checkpoint and Path(checkpoint).is_file():
        return "checkpoint", file_digest(checkpoint)
    return "run", run


def check_replaceable(path: str | Path, source: tuple, overwrite: bool = False, flag: str = "--overwrite"):
    """Refuse to replace a metrics file that holds the result of another checkpoint or run than
    ``source`` (``result_source``), unless ``overwrite``. Evaluations call it before inference too,
    so that a refusal does not come after the whole evaluation."""
    path = Path(path)
    if path.is_file() and not overwrite:
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        if _source(old) != source:
            what = (old.get("provenance") or {}).get("checkpoint") or (old.get("provenance") or {}).get("run")
            raise RunDirError(f"{path} holds the result of another evaluation ({what or 'no provenance'}): "
                              f"write to another directory, or pass {flag} to replace it")


def write_metrics(path: str | Path, record: dict, overwrite: bool = False, flag: str = "--overwrite") -> Path:
    """Write a metrics record (with its ``provenance``) atomically, never replacing another
    evaluation's silently (``check_replaceable``)."""
    check_replaceable(path, _source(record), overwrite, flag)
    return write_json_atomic(path, record)


def flatten(tree, prefix: str = "") -> dict:
    """Nested dicts as {"a.b.c": value}; other values as their JSON form (objects by repr without
    addresses), so two configs compare setting by setting."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.loads(json.dumps(tree, default=_describe))}


def _describe(obj) -> str:
    import functools

    if isinstance(obj, functools.partial):
        args = ", ".join([*map(repr, obj.args), *(f"{k}={v!r}" for k, v in obj.keywords.items())])
        return f"partial({_describe(obj.func)}, {args})"
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{getattr(obj, '__module__', type(obj).__module__)}.{name}"
