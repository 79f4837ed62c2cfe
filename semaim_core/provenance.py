"""Numbers that say where they came from: the provenance a metrics file records about the number
it holds (the scored checkpoint's path and content hash, or the run whose in-training model it
scored; the suite's commit; the iteration or epoch, dataset and images the caller adds), and the
rule that a metrics file is never silently replaced by another checkpoint's or run's result."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch

from .rundir import REPO, RunDirError, file_digest
from .safe_io import write_json_atomic


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
