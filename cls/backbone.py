"""The classification backbone: a timm ViT with a pretrained encoder's weights (verified load),
as det/checkpoint.py does for detectron2 and seg/backbone.py for mmseg."""
from __future__ import annotations

from pathlib import Path

import timm
import torch

from semaim_core.layouts import read_encoder, timm_model_args
from semaim_core.weights import load_verified, resize_pos_embed


def timm_vit_from_encoder(path: str | Path, img_size: int | None = None, **overrides) -> torch.nn.Module:
    """A timm ``VisionTransformer`` with the encoder's weights; only the classifier head is left
    at initialization (``overrides`` such as ``num_classes`` or ``drop_path_rate`` go to timm).
    At an ``img_size`` other than the pretraining one the position table is resized."""
    sd, meta = read_encoder(path)
    arch, kwargs = timm_model_args(meta)
    if img_size:
        kwargs["img_size"] = img_size
    model = timm.create_model(arch, pretrained=False, **{**kwargs, **overrides})
    if sd["pos_embed"].shape != model.pos_embed.shape:
        sd = dict(sd, pos_embed=resize_pos_embed(sd["pos_embed"], model.patch_embed.num_patches))
    allowed = [r"^head\."]
    if isinstance(model.norm, torch.nn.Identity):  # global pooling: timm's fc_norm replaces the final norm,
        sd = {k: v for k, v in sd.items() if not k.startswith("norm.")}  # as in MAE's fine-tuning
        allowed.append(r"^fc_norm\.")
    load_verified(model, sd, f"timm {arch} <- {path}", allowed_missing=allowed)
    return model
