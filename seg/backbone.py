"""The SemAIM ViT as an mmseg backbone: mmseg's MAE backbone, loading an exported SemAIM encoder
(any kind the suite's converter reads) with a report, and failing when any weight is missing."""
from __future__ import annotations

import torch
from mmengine.logging import print_log
from mmseg.models.backbones import MAE
from mmseg.registry import MODELS

from semaim_core.layouts import describe_kind, mmseg_keys, read_encoder
from semaim_core.weights import load_verified

# What a pretrained encoder does not have: mmseg's layer scale (gamma, 1.0 = none with
# init_values=1.0) and relative-position tables (zero, as for MAE weights).
ALLOWED_MISSING = (r"\.gamma_[12]$", r"relative_position_(bias_table|index)$")


@MODELS.register_module()
class SemAIMViT(MAE):
    """mmseg ``MAE`` (BEiT-style blocks ``layers.i``) initialized from ``checkpoint``."""

    def __init__(self, checkpoint: str | None = None, init_values: float = 1.0, final_norm: bool = False, **kwargs):
        super().__init__(init_values=init_values, final_norm=final_norm, **kwargs)
        self.checkpoint = checkpoint

    def init_weights(self):
        super().init_weights()
        if self.checkpoint:
            self.load_encoder(self.checkpoint)

    def load_encoder(self, path: str) -> dict:
        sd, meta = read_encoder(path)
        sd = mmseg_keys(sd)
        if not self.final_norm:  # the encoder's final norm has no place without final_norm
            sd = {k: v for k, v in sd.items() if not k.startswith("ln1.")}
        sd = self.resize_abs_pos_embed(sd)  # mmseg's own bicubic resize to this backbone's grid
        report = load_verified(self, sd, f"mmseg SemAIMViT <- {path} ({describe_kind(meta)})",
                               allowed_missing=ALLOWED_MISSING)
        for name, p in self.named_parameters():
            if name.endswith("relative_position_bias_table"):
                torch.nn.init.zeros_(p)
        print_log(f"SemAIMViT: loaded {report['loaded']} tensors from {path}; at initialization: "
                  f"{len(report['left_at_init'])} (layer scales and relative-position tables)", logger="current")
        return report
