"""One run per directory: its lock, its recorded recipe, and the logs a resumed run must not repeat.

``open_run`` is called by every trainer and evaluator (pretraining, cls, det, seg) before it touches
its output directory:

* a lock file (``.lock``, naming its owner process) keeps a second process out;
* temporary files of a write that was killed (``.<name>.tmp*``) are removed;
* the run's recipe is recorded in ``run.json``, its input files by content. A later start resumes
  or re-scores only when its recipe matches (settings that only say where to stop may change);
  otherwise it stops before touching anything and names each differing setting. A fresh start
  into a directory that holds another run is refused unless ``overwrite``, which clears it first
  (never a folder that is not a run of the suite).

What a metrics file records about the number it holds is ``provenance``'s.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path

from .errors import UserError
from .safe_io import atomic_write, write_json_atomic

LOCK, RECIPE, CHANGES = ".lock", "run.json", "recipe_changes.jsonl"
REPO = Path(__file__).resolve().parents[1]

logger = logging.getLogger(__name__)


class RunDirError(UserError, RuntimeError):
    """The output directory holds another run, is in use, or cannot be resumed as asked."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot, /proc/PID/stat field 22): with the pid, it names
    one process, so a pid reused by another process after a crash is told apart from the owner."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[1].split()[19] if stat else None


def process_identity(pid: int | None = None) -> dict:
    """What a lock records of its owner: pid, host, boot, PID namespace and start time. Pids mean
    something only within one boot of one host and one PID namespace (a container, ``unshare --pid``)."""
    pid = pid or os.getpid()
    ns = os.readlink("/proc/self/ns/pid") if os.path.exists("/proc/self/ns/pid") else None
    me = dict(pid=pid, host=socket.gethostname(), boot=_read("/proc/sys/kernel/random/boot_id"), pid_ns=ns,
              start=_start_time(pid))
    if os.environ.get("SLURM_JOB_ID"):  # a requeued job keeps its id, on any host, and counts its restarts
        me["slurm_job"] = [os.environ["SLURM_JOB_ID"], int(os.environ.get("SLURM_RESTART_COUNT", 0))]
    return me


def _lock_owner(path: Path) -> dict:
    """The identity a lock file records; older locks hold "PID HOST" (or just a pid)."""
    text = _read(path) or ""
    try:
        owner = json.loads(text)
        if isinstance(owner, dict):
            return owner
    except ValueError:
        pass
    words = text.split()
    return dict(pid=int(words[0]) if words and words[0].isdigit() else None,
                host=words[1] if len(words) > 1 else socket.gethostname())


def _stale(owner: dict, me: dict, path: Path, what: str) -> bool:
    """True when the lock's owner is gone; an error when it may be alive; the message says how to
    recover when the lock is in fact stale."""
    recover = f"if that run is gone, delete the lock file {path}"
    job, my_job = owner.get("slurm_job"), me.get("slurm_job")
    if job and my_job and job[0] == my_job[0] and job[1] < my_job[1]:
        return True  # an earlier start of this SLURM job, which SLURM ended before requeuing it
    if owner.get("host") != me["host"]:
        raise RunDirError(f"{what} is in use by process {owner.get('pid')} on host {owner.get('host')} (lock file "
                          f"{path}): wait for it to end; {recover}")
    if owner.get("boot") and me["boot"] and owner["boot"] != me["boot"]:
        return True  # written before this machine last booted
    if owner.get("pid_ns") and me["pid_ns"] and owner["pid_ns"] != me["pid_ns"]:
        raise RunDirError(f"{what} is in use by process {owner.get('pid')} of another PID namespace on this host (a "
                          f"container, or unshare --pid), whose pids cannot be checked from here (lock file {path}): "
                          f"wait for it to end; {recover}")
    pid = owner.get("pid")
    if pid is None or pid == me["pid"] or not _alive(pid):
        return True
    if owner.get("start") and _start_time(pid) not in (None, owner["start"]):
        return True  # the pid now names another process: the owner is gone
    raise RunDirError(f"{what} is in use by process {pid} (lock file {path}): wait for it to end, or write to another "
                      f"directory. If process {pid} is not a run of the suite (a pid reused after a crash), delete "
                      "the lock file")


def acquire_lock(folder: Path, name: str = LOCK, what: str | None = None) -> Path:
    """Create ``folder/name`` (``.lock``) naming this process (``process_identity``). A lock whose
    owner is alive is an error naming ``what`` (default: the folder); a stale one (its owner gone,
    its pid reused by another process, written before the last boot, or by an earlier start of this
    requeued SLURM job) is taken over; one from another host or PID namespace, whose pids mean
    nothing here, is never taken."""
    path, me = Path(folder) / name, process_identity()
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _stale(_lock_owner(path), me, path, what or str(folder)):
                path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
        atexit.register(release_lock, folder, name)
        return path


def release_lock(folder: Path, name: str = LOCK):
    path = Path(folder) / name
    if _lock_owner(path).get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def _is_temp_file(p: Path) -> bool:
    return p.is_file() and p.name.startswith(".") and ".tmp" in p.name and p.name != LOCK


def remove_temp_files(folder: Path) -> list[str]:
    """Leftovers of a write that was killed: ``.<name>.tmp`` and ``.<name>.tmp-<pid>`` files."""
    removed = []
    for p in folder.iterdir():
        if _is_temp_file(p):
            p.unlink()
            removed.append(p.name)
    if removed:
        logger.warning(f"{folder}: removed {len(removed)} temporary files of an interrupted write: {removed[:4]}")
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
            logger.warning(f"{path}: dropping a torn last row (the run was stopped while writing it): {line[:60]!r}")
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
    folder = make_run_folder(folder)
    acquire_lock(folder)
    try:
        return _claim(folder, canonical(recipe), overwrite, fresh, stopping, flag, allow_change, change_flag)
    except BaseException:
        release_lock(folder)  # a refused start leaves the directory as it found it
        raise


def _claim(folder: Path, recipe: dict, overwrite, fresh, stopping, flag, allow_change, change_flag) -> bool:
    recorded = folder / RECIPE
    # a recipe alone (a start that failed before writing anything) holds no run yet
    content = [p.name for p in folder.iterdir() if p.name not in (LOCK, RECIPE) and not _is_temp_file(p)]
    if content and not recorded.is_file():  # never cleared, whatever the flag: it may be anything
        raise RunDirError(f"{folder} holds files ({', '.join(sorted(content)[:5])}) but no {RECIPE}: it is not a run "
                          f"of this suite, so nothing in it is replaced or deleted, {flag} or not. Choose another "
                          "directory (or empty this one yourself)")
    old_recipe = read_recipe(recorded) if content and not overwrite else None
    if overwrite:
        for p in folder.iterdir():
            if p.name != LOCK:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        logger.info(f"{folder}: cleared for a new run ({flag})")
    remove_temp_files(folder)
    if content and not overwrite:
        if fresh:
            raise RunDirError(f"{folder} already holds a run ({', '.join(sorted(content)[:5])}): a new run needs an "
                              f"empty directory. Choose another one, or pass {flag} to discard what is there")
        diffs = recipe_differences(old_recipe, recipe, ignore=stopping)
        if diffs and allow_change:
            with open(folder / CHANGES, "a") as f:
                f.write(json.dumps(dict(time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), changes=diffs)) + "\n")
            logger.warning(f"{folder}: continuing with a changed recipe (recorded in {CHANGES}):\n  "
                           + "\n  ".join(diffs))
        elif diffs:
            raise RunDirError(f"{folder} holds a run with another recipe; continuing it would mix two experiments:\n  "
                              + "\n  ".join(diffs) + f"\nUse a new directory for the new recipe, or pass {flag} to "
                              "discard the old run" + (f"; to continue this run with the change on purpose (e.g. a "
                              f"lower lr after a NaN), pass {change_flag}: it is recorded in {CHANGES}"
                              if change_flag else ""))
    write_json_atomic(recorded, recipe)
    return bool(content) and not overwrite


def make_run_folder(folder: str | Path) -> Path:
    """``folder``, created if needed; a path that is a file, or that cannot be created or written,
    is an error that says so."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunDirError(f"the output directory {folder} is a file, not a folder: name a folder for the run")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create the output directory {folder} ({e.strerror}): choose a folder you can "
                          "write to") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RunDirError(f"the output directory {folder} is not writable: choose a folder you can write to")
    return folder


def read_recipe(path: Path) -> dict:
    """A run's recorded recipe; an empty or damaged ``run.json`` is an error that names it."""
    try:
        recipe = json.loads(path.read_text())
    except ValueError as e:
        state = "empty" if not path.read_text().strip() else f"not valid JSON ({e})"
        raise RunDirError(f"{path} is {state}: the run's recorded recipe was damaged (a full disk, or an edit). "
                          f"Restore it from a copy, or start anew in another directory (or pass --overwrite to "
                          "discard this run)") from None
    if not isinstance(recipe, dict):
        raise RunDirError(f"{path} holds a JSON {type(recipe).__name__}, not a recipe: restore it, or start anew in "
                          "another directory")
    return recipe


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
