"""Putting weights into a module: the verified load that every consumer uses (report what loaded,
fail on anything missing, misplaced or misshapen) and the position-table resize of ViTDet and mmseg."""
from __future__ import annotations

import logging
import re

import torch
from timm.layers import resample_abs_pos_embed

from .safe_io import CheckpointError

logger = logging.getLogger(__name__)


def resize_pos_embed(pos: torch.Tensor, num_patches: int) -> torch.Tensor:
    """(1, 1 + n, D) [CLS] + square-grid position table -> (1, 1 + num_patches, D): timm's
    ``resample_abs_pos_embed``, bicubic without antialiasing, which is what ViTDet's ``get_abs_pos``
    and mmseg's ``resize_pos_embed`` compute when the fine-tuning size differs from the pretraining one."""
    old, new = int(round((pos.shape[1] - 1) ** 0.5)), int(round(num_patches ** 0.5))
    if old * old != pos.shape[1] - 1 or new * new != num_patches:
        raise CheckpointError(f"cannot resize a {pos.shape[1] - 1}-patch position table to {num_patches}: "
                              "both grids must be square")
    if old == new:
        return pos
    return resample_abs_pos_embed(pos, new_size=[new, new], num_prefix_tokens=1, interpolation="bicubic",
                                  antialias=False)


def load_verified(module: torch.nn.Module, sd: dict, what: str, allowed_missing=()) -> dict:
    """Load ``sd`` into ``module`` and report; fail if any weight of ``sd`` found no place, or any
    parameter of ``module`` got none unless it matches ``allowed_missing`` (regexes).

    Shapes are checked too: a mismatch is an error, not a silent skip."""
    own = module.state_dict()
    unexpected = sorted(k for k in sd if k not in own)
    mismatched = sorted(k for k in sd if k in own and own[k].shape != sd[k].shape)
    missing = sorted(k for k in own if k not in sd and not any(re.search(p, k) for p in allowed_missing))
    if unexpected or mismatched or missing:
        lines = [f"{what}: the weights do not fit the model"]
        if missing:
            lines.append(f"  {len(missing)} model weights got no value: {missing[:8]}")
        if unexpected:
            lines.append(f"  {len(unexpected)} checkpoint weights found no place: {unexpected[:8]}")
        for k in mismatched[:8]:
            lines.append(f"  shape of {k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}")
        raise CheckpointError("\n".join(lines))
    result = module.load_state_dict(sd, strict=False)  # strict=False only for the allowed leftovers, checked above
    report = dict(loaded=len(sd), left_at_init=sorted(result.missing_keys))
    logger.info(f"{what}: loaded {report['loaded']} tensors; left at initialization (allowed): "
          f"{len(report['left_at_init'])} {report['left_at_init'][:4]}")
    return report
