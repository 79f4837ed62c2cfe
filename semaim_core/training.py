"""What the suite's training loops share (pretraining, cls fine-tuning and linear probing), as MAE's
util/misc.py serves its three main_*.py: the AMP dtype, the optimizer step with clipping and a
non-finite guard, training checkpoints recognized by their format tag and resumed exactly (RNG
included). What a run writes as it goes is ``runlog.RunLog``."""
from __future__ import annotations

import collections
import random
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .errors import UserError
from .safe_io import CheckpointError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


class NonFiniteError(UserError, FloatingPointError):
    """A loss or gradient norm that is NaN or inf: the run stops and keeps its last good checkpoint."""


def autocast(device: torch.device, amp: torch.dtype | None):
    """The step's mixed precision (``amp`` from ``AMP_DTYPES``; None: fp32, autocast off)."""
    return torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)


def grad_scaler(device: torch.device, amp: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling for fp16 only (bf16 and fp32 need none: the scaler is then a pass-through)."""
    return torch.amp.GradScaler(device.type, enabled=amp is torch.float16)


def optimizer_step(optimizer, scaler, params, clip: float | None, where: str = "",
                   advice: str | Callable[[], str] = "") -> torch.Tensor:
    """Unscale, clip to ``clip`` (None: measure only), step and zero the gradients; returns the
    gradient norm before clipping. ``params`` is a list of tensors, or a list of such lists each
    clipped on its own (the norm returned is then the largest). fp16: the GradScaler skips a step
    with inf/NaN gradients and lowers its scale. Otherwise a non-finite gradient would write NaN
    into every weight, so stop before the update (the error says ``where`` and ``advice``, a text or
    a function that builds it, called only then)."""
    scaler.unscale_(optimizer)
    groups = params if params and isinstance(params[0], (list, tuple)) else [params]
    norm = torch.stack([torch.nn.utils.clip_grad_norm_(g, clip or float("inf")) for g in groups]).max()
    if not torch.isfinite(norm) and not scaler.is_enabled():
        optimizer.zero_grad(set_to_none=True)
        advice = advice() if callable(advice) else advice
        raise NonFiniteError(f"gradient norm is {norm.item()} {where}: stopping before the update. {advice}")
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return norm


class LossWatch:
    """Says when the training loss jumps far above its recent level (an lr too high for the batch,
    most often), when it comes back, and when it stays up: such a run goes on, it is only a NaN that
    stops it, so without these lines a diverged run would look like any other in the log."""

    def __init__(self, factor: float = 10.0, window: int = 20, advice: str = ""):
        self.recent, self.factor, self.window, self.advice = collections.deque(maxlen=window), factor, window, advice
        self.level, self.high = None, 0  # the level before a jump, steps since it

    def update(self, loss: float, where: str) -> str | None:
        """The line to print for ``loss`` (reached ``where``), or None."""
        if self.level is not None:
            self.high += 1
            if loss <= 2 * self.level:
                line, self.level = f"the loss is back to {loss:.4g} {where} (before its jump: {self.level:.4g})", None
                self.recent.append(loss)
                return line
            if self.high == self.window:
                return (f"WARNING: the loss has stayed above {2 * self.level:.4g} for {self.window} steps, now "
                        f"{loss:.4g} {where}: this run is unlikely to recover. {self.advice}")
            return None
        if len(self.recent) >= 2 and loss > self.factor * statistics.median(self.recent):
            self.level, self.high = statistics.median(self.recent), 0
            return (f"WARNING: the loss jumped to {loss:.4g} {where}, {loss / self.level:.0f} x its recent level "
                    f"{self.level:.4g}: the lr may be too high. The run goes on (a NaN would stop it). {self.advice}")
        self.recent.append(loss)
        return None


def rng_state() -> dict:
    return dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                numpy=np.random.get_state(), python=random.getstate())


def set_torch_rng_state(state: dict):
    """Only torch's generators (CPU and CUDA) from a ``rng_state``: what drop path, dropout and the
    orders draw from, while numpy and Python drive data augmentation that a loader replay restores."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def set_rng_state(state: dict):
    set_torch_rng_state(state)
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def all_rng_states() -> list[dict]:
    """Every process's RNG state, in rank order (one process: a list of one). A collective under
    DDP: every rank must call it, since each rank draws its own drop path, orders and noise."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [rng_state()]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, rng_state())
    return states


def training_state(fmt: str, model, optimizer, scaler, rng: list[dict] | None = None, **extra) -> dict:
    """A training checkpoint: weights, optimizer, loss scaler and every rank's RNG (``rng``, from
    ``all_rng_states``; default: this process's), tagged ``fmt``."""
    rng = rng or [rng_state()]
    return dict(format=fmt, model=model.state_dict(), optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                rng=rng[0], rng_per_rank=rng, **extra)


def require_format(ckpt: dict, path: str | Path, fmt: str, what: str, hint: str) -> dict:
    """``ckpt`` (read from ``path``) if it is a ``fmt`` training checkpoint; else an error naming
    what it should be (``what``) and what to do (``hint``)."""
    if ckpt.get("format") != fmt:
        raise CheckpointError(f"{path} is not {what} (format {ckpt.get('format')!r}); {hint}")
    return ckpt


def restore(ckpt: dict, model, optimizer, scaler):
    """Continue exactly where ``ckpt`` (``training_state``) stopped: strict weights, optimizer, scaler,
    and this rank's own RNG state."""
    model.load_state_dict(ckpt["model"])  # strict: a training checkpoint must match exactly
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(own_rng_state(ckpt.get("rng_per_rank") or [ckpt["rng"]]))


def own_rng_state(per_rank: list[dict]) -> dict:
    """This process's entry of ``all_rng_states``; a checkpoint of another world size is an error."""
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if len(per_rank) != world:
        raise CheckpointError(f"the checkpoint holds the RNG states of {len(per_rank)} processes, this run has "
                              f"{world}: resume with the number of processes that wrote it")
    return per_rank[rank]
