"""Let mmsegmentation import on mmcv-lite, which ships mmcv's Python code without ``mmcv._ext``.

Four mmseg modules import ``mmcv.ops`` unconditionally (``point_sample`` and
``sigmoid_focal_loss``), so on mmcv-lite ``import mmseg.models`` fails although UperNet, FCNHead,
Feature2Pyramid and the MAE/BEiT backbones use no compiled op. When the compiled ops are missing
we register a light ``mmcv.ops`` package in their place: it serves mmcv's own pure-PyTorch
``point_sample`` module, and every other name resolves to a stand-in that raises a clear error
naming the fix if it is ever used. With a full mmcv build this module does nothing.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
import warnings

FULL_MMCV_HINT = (
    "it needs mmcv's compiled ops, which mmcv-lite does not have: rebuild the environment with "
    "`make setup MMCV=full` (builds mmcv 2.1.0 with ops, ~20 min) or pick a head that needs no ops."
)
PURE_PYTORCH_MODULES = ("point_sample",)  # mmcv.ops submodules that need no compiled extension


def has_compiled_ops() -> bool:
    return importlib.util.find_spec("mmcv._ext") is not None


class _MissingOp:
    """Stand-in for a compiled mmcv op: importable, fails with a clear message when used."""

    def __init__(self, name: str):
        self.__name__ = self.__qualname__ = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"mmcv.ops.{self.__name__} is unavailable: {FULL_MMCV_HINT}")

    def __repr__(self):
        return f"<unavailable mmcv.ops.{self.__name__}>"


def install() -> bool:
    """Provide ``mmcv.ops`` without compiled ops if needed; return True if the shim is active."""
    existing = sys.modules.get("mmcv.ops")
    if getattr(existing, "__semaim_shim__", False):
        return True
    if has_compiled_ops():
        return False
    import mmcv

    ops = types.ModuleType("mmcv.ops", doc="mmcv.ops without compiled extensions (semaim seg/mmcv_compat.py)")
    ops.__path__ = [os.path.join(p, "ops") for p in mmcv.__path__]  # submodules load, __init__ does not
    ops.__semaim_shim__ = True
    # mmcv warns at import that this op is missing; the stand-in below names the fix if it is used
    warnings.filterwarnings("ignore", message="Fail to import ``MultiScaleDeformableAttention``", category=UserWarning)
    sys.modules["mmcv.ops"] = ops
    mmcv.ops = ops
    for name in PURE_PYTORCH_MODULES:
        sub = importlib.import_module(f"mmcv.ops.{name}")
        for attr in dir(sub):
            if not attr.startswith("_"):
                setattr(ops, attr, getattr(sub, attr))

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _MissingOp(name)

    ops.__getattr__ = __getattr__
    return True
