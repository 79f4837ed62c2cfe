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
nothing (torch allows them). A caller that reads a framework's files passes that framework's plain
types as ``extra_globals`` (seg/engine.py: mmengine's ``HistoryBuffer`` in checkpoints written before
the suite stored it as plain numbers). safetensors files hold no code and need none of this.

A file outside the allow-list, or a TorchScript archive (its code is run by ``torch.jit.load``), is
refused with ``UnsafeCheckpointError``, naming what it would import. The one way past it is
``trust_pickle=True`` (``tools/convert_checkpoint.py --trust-pickle``): a one-time conversion, with a
warning, of a file you trust into safetensors.

A file cannot make the reader allocate more memory than the file holds: a zip record stored
compressed (torch.save never compresses; a deflated record of zeros expands a thousandfold) or one
that claims more bytes than the file has is refused before torch reads it, and a numpy array is
built only if its declared size fits in the file. Only local regular files are read: an address
(``http://``, ``s3://``, ``torchvision://``, ...) is refused by name, so that no framework's own
downloader and ``torch.load`` reads it, and so that every input is hashed into its run's recipe.
The format is read from the content, not the name (a safetensors file named ``.pth`` is read as
safetensors).
"""
from __future__ import annotations

import argparse
import contextvars
import errno
import json
import logging
import math
import os
import pathlib
import pickle
import pickletools
import re
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from .errors import UserError

logger = logging.getLogger(__name__)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, unreadable, of the wrong kind or incomplete."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that can only be read by running code it holds."""


# the size of the file being read: no array it describes can hold more bytes than that
_FILE_BYTES = contextvars.ContextVar("semaim_file_bytes", default=0)


class OversizedArrayError(CheckpointError):
    """A pickled numpy array declares more bytes than its file holds."""


def _bounded_reconstruct(subtype, shape, dtype):
    """numpy's ``_reconstruct`` (how a pickled array starts: an empty array, filled by its state),
    refusing a declared size the file cannot hold before numpy allocates it. numpy writes shape
    (0,) here; a file that asks for 10^10 elements wants the reader's memory, not its data."""
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    itemsize = np.dtype(dtype.decode() if isinstance(dtype, bytes) else dtype).itemsize
    nbytes = math.prod(dims) * max(itemsize, 1)
    if any(d < 0 for d in dims) or nbytes > _FILE_BYTES.get():
        raise OversizedArrayError(f"a numpy array of shape {dims} ({nbytes:,} bytes) in a file of "
                                  f"{_FILE_BYTES.get():,} bytes")
    return np._core.multiarray._reconstruct(subtype, shape, dtype)


def _numpy_globals() -> list:
    # pickles written under numpy 1.x name numpy.core.*, under 2.x numpy._core.*: accept both names
    core = np._core.multiarray
    names = [(_bounded_reconstruct, "_reconstruct"), (core.scalar, "scalar")]
    aliases = [(f, f"{prefix}.{name}") for f, name in names for prefix in ("numpy.core.multiarray",
                                                                             "numpy._core.multiarray")]
    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.int16,
                                          np.int8, np.uint64, np.uint32, np.uint16, np.uint8, np.bool_)]
    return [*aliases, np.ndarray, np.dtype, *dtypes]


SAFE_GLOBALS = (argparse.Namespace, pathlib.PosixPath, pathlib.PurePosixPath, *_numpy_globals())


def _global_names(allowed) -> set[str]:
    return {o[1] if isinstance(o, tuple) else f"{o.__module__}.{o.__qualname__}" for o in allowed}


# what `os.system` and friends are called inside a pickle
_OS_MODULES = {"posix": "os", "nt": "os"}


def refuse_unsafe(path: Path, names: list[str], reason: str | None = None) -> UnsafeCheckpointError:
    """The error for a pickle that imports ``names`` (outside the allow-list), or that the safe
    unpickler stopped at for ``reason``: what and how to go on."""
    shown = [f"{n} (= {_OS_MODULES[n.split('.')[0]]}.{n.split('.', 1)[1]})" if n.split(".")[0] in _OS_MODULES else n
             for n in names]
    if shown or not reason:
        what = f"imports {', '.join(shown) or 'an object outside the allow-list'}"
        reason = (f"{what}, which is not plain data (tensors, numbers, strings, argparse.Namespace, numpy arrays), so "
                  "loading it could run code the file chose")
    return UnsafeCheckpointError(
        f"refusing to read {path}: its pickle {reason}. If you trust the file and where it came from, convert it "
        f"once: python tools/convert_checkpoint.py {path} OUT.safetensors --trust-pickle (add --state-dict for a "
        "file that is not an encoder, e.g. a teacher), then use OUT.safetensors from then on.")


def _warn_trusted(path: Path, how: str):
    logger.warning(f"WARNING: --trust-pickle: reading {path} with {how}, which runs any code the file holds. Do "
                   "this only with a file you trust, and use the safetensors file you write from it from then on.")


_ADDRESS = re.compile(r"^(?:[\w.+-]+:)?([A-Za-z][\w.+-]*)://")  # http://, s3://, open-mmlab:s3://, ...


def refuse_address(path: str | Path, what: str = "checkpoint"):
    """An error for a URL or storage address given where the suite reads a local file."""
    m = _ADDRESS.match(str(path))
    if m:
        raise CheckpointError(
            f"{what} {path} is a {m.group(1)}:// address: the suite reads local files only, so that every file goes "
            "through its safe reader (a framework's downloader would unpickle it with torch.load, which can run "
            "code) and is hashed into the run's recipe. Download it (curl -LO URL), check where it came from, "
            "and pass the local path")


def check_file(path: str | Path, what: str = "checkpoint") -> Path:
    """That ``path`` is a local regular file this process can read, checked before a run claims its
    directory (the file itself is read later)."""
    refuse_address(path, what)
    _file_size(Path(path), what)
    return Path(path)


def _file_size(path: Path, what: str = "checkpoint") -> int:
    """The size of a regular file; any other path (missing, a folder, a device, a FIFO, a symbolic
    link loop) is an error that says what it is."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise CheckpointError(f"{what} {path} is a symbolic link to {os.readlink(path)}, which does not "
                                  "exist: point it at the checkpoint file") from None
        raise CheckpointError(f"{what} {path} does not exist") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CheckpointError(f"{what} {path} is a loop of symbolic links that never reaches a file: "
                                  "point the link at the checkpoint file") from None
        raise CheckpointError(f"cannot open {what} {path} ({e.strerror})") from None
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    for test, kind in kinds:
        if test(st.st_mode):
            fix = f"name the file inside it (e.g. {path}/encoder.pth)" if kind == "a folder" else \
                "pass a checkpoint file"
            raise CheckpointError(f"{what} {path} is {kind}, not a file: {fix}")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"cannot read checkpoint {path}: permission denied")
    return st.st_size


def _sniff(path: Path, size: int) -> str:
    """"zip" (torch.save's format, TorchScript), "safetensors" or "pickle" (an older torch.save, or
    anything else), from the first bytes: a header length that fits the file, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    looks_like = len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= size - 8
    if looks_like or path.suffix == ".safetensors":  # by name too: a torn one gets safetensors' error
        return "safetensors"
    return "pickle"


def _zip_records(path: Path) -> list[zipfile.ZipInfo]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path} (a damaged zip archive: {e}); is it a complete "
                              "PyTorch checkpoint?") from None


def _check_records(path: Path, size: int, records: list[zipfile.ZipInfo]):
    """Refuse a zip checkpoint that would expand in memory: a record stored compressed, or one that
    claims more bytes than the file holds (torch reads each record whole, at its declared size).
    (TorchScript archives compress their code; they are refused, or read with --trust-pickle.)"""
    for r in records:
        if r.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"refusing to read {path}: its record {r.filename} is stored compressed (zip method "
                f"{r.compress_type}, {r.compress_size:,} bytes that expand to {r.file_size:,}). torch.save never "
                "compresses, and a compressed record can make the reader allocate far more memory than the file's "
                "size: the file was not written by torch.save as it is. Save the weights again with torch.save")
        if r.file_size != r.compress_size or r.header_offset + r.compress_size > size:
            raise CheckpointError(
                f"refusing to read {path}: its record {r.filename} declares {r.file_size:,} bytes, more than the "
                f"{size:,}-byte file holds (a damaged or forged archive). Use an intact copy of the checkpoint")


def load_file(path: str | Path, trust_pickle: bool = False, extra_globals: tuple = ()) -> dict:
    """The dict in a checkpoint file (safetensors, or a torch pickle read with the allow-list).

    ``extra_globals``: plain-data types of one framework's files, allowed for this read besides
    ``SAFE_GLOBALS`` (their unpickling must run no code of the file's choosing).
    ``trust_pickle``: read a pickle or TorchScript archive with full unpickling (it may run code);
    only for the explicit ``--trust-pickle`` of the converter."""
    refuse_address(path)
    path = Path(path)
    size = _file_size(path)
    kind = _sniff(path, size)
    if kind == "safetensors":
        return _load_safetensors(path)
    if kind == "zip":
        records = _zip_records(path)
        if any(r.filename.endswith("/constants.pkl") or "/code/" in r.filename for r in records):  # TorchScript
            if not trust_pickle:
                raise UnsafeCheckpointError(
                    f"refusing to read {path}: it is a TorchScript archive, and loading one runs the code it holds. "
                    "If you trust it (e.g. OpenAI's CLIP ViT-B-16.pt), extract its weights once: python "
                    f"tools/convert_checkpoint.py {path} OUT.safetensors --state-dict --trust-pickle, then pass "
                    "OUT.safetensors.")
            _warn_trusted(path, "torch.jit.load")
            return dict(torch.jit.load(path, map_location="cpu").state_dict())
        _check_records(path, size, records)
    allowed = [*SAFE_GLOBALS, *extra_globals]
    limit = _FILE_BYTES.set(size)
    try:
        if trust_pickle:
            _warn_trusted(path, "full unpickling (torch.load(weights_only=False))")
            ckpt = torch.load(path, map_location="cpu", weights_only=False)  # the one flagged path
        else:
            with torch.serialization.safe_globals(allowed), warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)  # said in our error
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except OversizedArrayError as e:
        raise CheckpointError(f"refusing to read {path}: it declares {e}, more than the file can hold (a forged "
                              "file that asks for the reader's memory). Use an intact copy of the checkpoint") from None
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise CheckpointError(f"cannot read checkpoint {path} (UnpicklingError: {e})") from e
        raise refuse_unsafe(path, _unsafe_globals(path, str(e), allowed), _reason(str(e))) from None
    except Exception as e:  # truncated zip, not a checkpoint, ...
        raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}: {e}); "
                              "is it a complete PyTorch checkpoint?") from e
    finally:
        _FILE_BYTES.reset(limit)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict of weights")
    return ckpt


def _reason(message: str) -> str | None:
    """What torch's safe unpickler stopped at, when it is not an import: an opcode it does not run
    (a plain pickle of protocol 4 or later: torch.save writes protocol 2) or an object it does not build."""
    if m := re.search(r"Unsupported operand (\d+)", message):
        code = int(m.group(1))
        name = next((op.name for op in pickletools.opcodes if op.code == chr(code)), "unknown")
        return (f"uses the pickle opcode {name} ({code}), which the safe reader does not execute: torch.save "
                "never writes it, so the file is a plain pickle (protocol 4 or later) or was written by hand")
    if m := re.search(r"but got <class '([\w.]+)'>", message):
        what = m.group(1)
        if what.endswith("ObjectDType"):
            what += " (a numpy array of dtype object, whose elements can be any Python object)"
        return (f"holds an object of type {what}, which the safe reader does not build (it builds tensors, numbers, "
                "strings, argparse.Namespace, numeric numpy arrays)")
    return None


def _unsafe_globals(path: Path, message: str, allowed) -> list[str]:
    """Every global the pickle names outside the allow-list (zip checkpoints: torch lists them without
    loading), else the one torch's error names."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        return sorted(set(found) - _global_names(allowed))
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
        except (ValueError, RecursionError) as e:  # RecursionError: arrays nested thousands deep
            reason = "nested too deeply to read" if isinstance(e, RecursionError) else f"not valid JSON ({e})"
            raise CheckpointError(f"{path}: the 'meta' entry of its safetensors header is {reason}; "
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


def write_json_atomic(path: str | Path, record) -> Path:
    return atomic_write(path, lambda f: f.write(json.dumps(record, indent=2, allow_nan=False).encode()))


def save_atomic(obj, path: str | Path) -> Path:
    """torch.save, atomically (``atomic_write``)."""
    return atomic_write(path, lambda f: torch.save(obj, f))
