"""The SemAIM ViT as an mmseg backbone: mmseg's MAE backbone, loading an exported SemAIM encoder
(any kind the suite's converter reads) with a report, and failing when any weight is missing; and
the linear head of the frozen-feature segmentation protocol (DINOv2 / DINOv3)."""
from __future__ import annotations

import math

import torch
from mmcv.cnn import build_norm_layer
from mmengine.logging import print_log
from mmseg.models.backbones import MAE, VisionTransformer
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS

from semaim_core.layouts import describe_kind, mmseg_keys, read_encoder
from semaim_core.weights import load_verified

# What a pretrained encoder does not have: mmseg's layer scale (gamma, 1.0 = none with
# init_values=1.0) and relative-position tables (zero, as for MAE weights).
ALLOWED_MISSING = (r"\.gamma_[12]$", r"relative_position_(bias_table|index)$")


@MODELS.register_module()
class SemAIMViT(MAE):
    """mmseg ``MAE`` (BEiT-style blocks ``layers.i``) initialized from ``checkpoint``.

    ``frozen``: a fixed feature extractor, as the linear protocols need it: no parameter takes a
    gradient, the blocks run without autograd and in eval mode (no drop path) whatever the runner sets.
    ``norm_outputs``: every output through the encoder's final norm (DINOv2/v3's intermediate layers
    with ``norm=True``); mmseg's ``final_norm`` alone reaches the last block's output only.
    ``cls_token_outputs``: each output a (patch map, [CLS] token) pair, as DINOv2's depth heads read
    them (``get_intermediate_layers(return_class_token=True)``); mmseg's MAE drops the [CLS] token.
    ``rel_pos_bias=False``: no relative-position tables. mmseg's MAE adds them at zero for
    fine-tuning to learn; a frozen encoder's stay at zero, and without them the backbone runs at any
    grid, its position table interpolated (bicubic) from ``img_size``'s grid as DINOv2's
    ``interpolate_pos_encoding`` does: the depth protocol trains on crops and tests on whole images.
    Without these options the outputs are mmseg MAE's (its forward, tested)."""

    def __init__(self, checkpoint: str | None = None, init_values: float = 1.0, final_norm: bool = False,
                 frozen: bool = False, norm_outputs: bool = False, cls_token_outputs: bool = False,
                 rel_pos_bias: bool = True, **kwargs):
        if norm_outputs and not final_norm:
            raise ValueError("SemAIMViT: norm_outputs=True needs final_norm=True (the final norm's weights)")
        super().__init__(init_values=init_values, final_norm=final_norm, **kwargs)
        self.checkpoint, self.frozen, self.norm_outputs = checkpoint, frozen, norm_outputs
        self.cls_token_outputs = cls_token_outputs
        if not rel_pos_bias:
            for layer in self.layers:
                layer.attn.relative_position_bias_table = None
        if frozen:
            self.requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(mode and not self.frozen)

    def forward(self, inputs):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            x, (h, w) = self.patch_embed(inputs)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.position_table((h, w))
            outs, last = [], len(self.layers) - 1
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if self.final_norm and i == last:
                    x = self.norm1(x)
                if i in self.out_indices:
                    tokens = self.norm1(x) if self.norm_outputs and i != last else x
                    patches = tokens[:, 1:].reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
                    outs.append((patches, tokens[:, 0]) if self.cls_token_outputs else patches)
        return tuple(outs)

    def position_table(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == tuple(self.patch_shape):
            return self.pos_embed
        if self.layers[0].attn.relative_position_bias_table is not None:
            raise ValueError(f"SemAIMViT: a {grid[0]} x {grid[1]} patch grid, built for {tuple(self.patch_shape)}: "
                             "the relative-position tables fit one grid (set img_size to the input's size, or "
                             "rel_pos_bias=False for a frozen encoder)")
        return VisionTransformer.resize_pos_embed(self.pos_embed, grid, self.patch_shape, "bicubic")

    def resize_abs_pos_embed(self, state_dict):
        """The checkpoint's square position table to this backbone's grid; mmseg's own resize (used
        for square grids) assumes the target is square too."""
        target = tuple(self.patch_shape)
        if target[0] == target[1] or "pos_embed" not in state_dict:
            return super().resize_abs_pos_embed(state_dict)
        pos = state_dict["pos_embed"]
        side = math.isqrt(pos.shape[1] - 1)
        if side * side != pos.shape[1] - 1:
            raise ValueError(f"SemAIMViT: the checkpoint's position table has {pos.shape[1] - 1} patch positions, "
                             "not a square grid")
        state_dict["pos_embed"] = VisionTransformer.resize_pos_embed(pos, target, (side, side), "bicubic")
        return state_dict

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


@MODELS.register_module()
class LinearBNHead(BaseDecodeHead):
    """The linear head of DINOv3's segmentation protocol (dinov3/eval/segmentation/models/heads/
    linear_head.py; DINOv2's BNHead): the features (several blocks' resized to the first's and
    concatenated: ``input_transform="resize_concat"``), Dropout2d (``dropout_ratio``), BatchNorm, then
    a 1 x 1 conv to the classes, initialized N(0, 0.01) with zero bias (mmseg's default for
    ``conv_seg``). ``channels`` must be the features' total width."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        width = sum(self.in_channels) if isinstance(self.in_channels, (list, tuple)) else self.in_channels
        if width != self.channels:
            raise ValueError(f"LinearBNHead: channels={self.channels} must be the features' width {width}")
        self.bn = build_norm_layer(self.norm_cfg or dict(type="BN"), width)[1]

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.conv_seg(self.bn(x))
