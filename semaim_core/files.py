"""Checkpoint files on disk: atomic writes, and reads that never run code from the file.

A ``.pth`` is a pickle, and unpickling can call any function the file names (``os.system``, ...).
Every read of a file goes through ``load_file``: ``torch.load(weights_only=True)`` with an explicit
allow-list, ``SAFE_GLOBALS``, of the plain data objects that genuine releases hold besides tensors
(found by reading how each format is saved):

  argparse.Namespace            ``args`` in MAE's, SAIM's, the authors' (util/misc.py save_model) and
                                timm's train.py checkpoints
  numpy arrays, scalars, dtypes the numpy RNG state in the suite's, detectron2's and mmengine's
                                training checkpoints; numbers mmengine logs (numpy 1.x and 2.x names)
  pathlib paths                 ``args`` fields declared ``type=Path``

Optimizer, loss-scaler and scheduler states, ``OrderedDict``, ``epoch`` numbers and strings need
nothing (torch allows them). A framework adds its own plain types with ``allow_globals`` (mmengine's
``HistoryBuffer``, seg/engine.py). safetensors files hold no code and need none of this.

A file outside the allow-list, or a TorchScript archive (its code is run by ``torch.jit.load``), is
refused with ``UnsafeCheckpointError``, naming what it would import. The one way past it is
``trust_pickle=True`` (``tools/convert_checkpoint.py --trust-pickle``): a one-time conversion, with a
warning, of a file you trust into safetensors.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import pickle
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, of the wrong kind or incomplete."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that can only be read by running code it holds."""


def _numpy_globals() -> list:
    # pickles written under numpy 1.x name numpy.core.*, under 2.x numpy._core.*: accept both names
    core = np._core.multiarray
    names = [(core._reconstruct, "_reconstruct"), (core.scalar, "scalar")]
    aliases = [(f, f"{prefix}.{name}") for f, name in names for prefix in ("numpy.core.multiarray",
                                                                             "numpy._core.multiarray")]
    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.int16,
                                          np.int8, np.uint64, np.uint32, np.uint16, np.uint8, np.bool_)]
    return [*aliases, np.ndarray, np.dtype, *dtypes]


SAFE_GLOBALS = [argparse.Namespace, pathlib.PosixPath, pathlib.PurePosixPath, *_numpy_globals()]


def allow_globals(*objs):
    """Add plain-data types that a framework's checkpoints hold (and whose unpickling runs no code
    of the file's choosing) to the allow-list of ``load_file``."""
    SAFE_GLOBALS.extend(o for o in objs if o not in SAFE_GLOBALS)


def _global_names() -> set[str]:
    return {o[1] if isinstance(o, tuple) else f"{o.__module__}.{o.__qualname__}" for o in SAFE_GLOBALS}


# what `os.system` and friends are called inside a pickle
_OS_MODULES = {"posix": "os", "nt": "os"}


def refuse_unsafe(path: Path, names: list[str]) -> UnsafeCheckpointError:
    """The error for a pickle that imports ``names`` (outside the allow-list): what and how to go on."""
    shown = [f"{n} (= {_OS_MODULES[n.split('.')[0]]}.{n.split('.', 1)[1]})" if n.split(".")[0] in _OS_MODULES else n
             for n in names] or ["an object outside the allow-list"]
    return UnsafeCheckpointError(
        f"refusing to read {path}: its pickle imports {', '.join(shown)}, which is not plain data (tensors, numbers, "
        "strings, argparse.Namespace, numpy arrays), so loading it could run code the file chose. If you trust the "
        "file and where it came from, convert it once: python tools/convert_checkpoint.py "
        f"{path} OUT.safetensors --trust-pickle (add --state-dict for a file that is not an encoder, e.g. a teacher), "
        "then use OUT.safetensors from then on.")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def _warn_trusted(path: Path, how: str):
    print(f"WARNING: --trust-pickle: reading {path} with {how}, which runs any code the file holds. Do this only "
          "with a file you trust, and use the safetensors file you write from it from then on.", file=sys.stderr)


def load_file(path: str | Path, trust_pickle: bool = False) -> dict:
    """The dict in a checkpoint file (.safetensors, or a torch pickle read with the allow-list).

    ``trust_pickle``: read a pickle or TorchScript archive with full unpickling (it may run code);
    only for the explicit ``--trust-pickle`` of the converter."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if _is_torchscript(path):
        if not trust_pickle:
            raise UnsafeCheckpointError(
                f"refusing to read {path}: it is a TorchScript archive, and loading one runs the code it holds. "
                "If you trust it (e.g. OpenAI's CLIP ViT-B-16.pt), extract its weights once: python "
                f"tools/convert_checkpoint.py {path} OUT.safetensors --state-dict --trust-pickle, then pass "
                "OUT.safetensors.")
        _warn_trusted(path, "torch.jit.load")
        return dict(torch.jit.load(path, map_location="cpu").state_dict())
    try:
        if trust_pickle:
            _warn_trusted(path, "full unpickling (torch.load(weights_only=False))")
            ckpt = torch.load(path, map_location="cpu", weights_only=False)  # the one flagged path
        else:
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise CheckpointError(f"cannot read checkpoint {path} (UnpicklingError: {e})") from e
        raise refuse_unsafe(path, _unsafe_globals(path, str(e))) from None
    except Exception as e:  # truncated zip, not a checkpoint, ...
        raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}: {e}); "
                              "is it a complete PyTorch checkpoint?") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict of weights")
    return ckpt


def _unsafe_globals(path: Path, message: str) -> list[str]:
    """Every global the pickle names outside the allow-list (zip checkpoints: torch lists them without
    loading), else the one torch's error names."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        return sorted(set(found) - _global_names())
    except Exception:  # a legacy (non-zip) pickle: torch's message names the first
        return re.findall(r"GLOBAL ([\w.]+)", message)[:1]


def _load_safetensors(path: Path) -> dict:
    """A safetensors file as the dict the other readers see: the suite's encoder (its metadata
    under "meta") or a bare state dict."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            sd = {k: f.get_tensor(k) for k in f.keys()}
            header = f.metadata() or {}
    except Exception as e:  # not a safetensors file, or a truncated one
        raise CheckpointError(f"cannot read safetensors file {path} ({type(e).__name__}: {e})") from e
    if header.get("format") == "semaim-encoder":
        try:
            meta = json.loads(header.get("meta", "{}"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: the 'meta' entry of its safetensors header is not valid JSON ({e}); "
                                  "the file was edited or damaged: export the encoder again") from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"{path}: the 'meta' entry of its safetensors header is a {type(meta).__name__}, "
                                  "not a JSON object: export the encoder again")
        return {"format": "semaim-encoder", "model": sd, "meta": meta}
    return sd


def save_safetensors(sd: dict, path: str | Path, metadata: dict | None = None) -> Path:
    """A state dict as safetensors (tensors made contiguous and unshared), atomically."""
    from safetensors.torch import save

    blob = save({k: v.detach().contiguous().clone() for k, v in sd.items()}, metadata=metadata)
    return atomic_write(path, lambda f: f.write(blob))


def atomic_write(path: str | Path, write) -> Path:
    """``write(f)`` into a temporary file beside ``path``, then ``commit`` it: a crash leaves the
    old file or the new one, never a torn one. (A killed write leaves ``.<name>.tmp-<pid>``,
    which the next run removes.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def commit(tmp: str | Path, path: str | Path):
    """Make the complete file ``tmp`` the file ``path``: fsync it, rename it over ``path``, fsync the folder."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(Path(path).parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_atomic(obj, path: str | Path) -> Path:
    """torch.save, atomically (``atomic_write``)."""
    return atomic_write(path, lambda f: torch.save(obj, f))
