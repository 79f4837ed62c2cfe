"""Monocular depth on frozen features, DINOv2's linear protocol, on mmseg 1.x's depth support
(``DepthEstimator``, ``NYUDataset``, ``LoadDepthAnnotation``, ``DepthMetric``).

What mmseg lacks, each as its source defines it:

* ``LinearDepthHead``: DINOv2's linear depth head (dinov2/eval/depth/models/decode_heads/
  linear_head.py ``BNHead`` and decode_head.py ``depth_pred``): each read block's patch tokens with
  its [CLS] token concatenated to every one, bilinearly upsampled x 4, concatenated, a 1 x 1 conv to
  256 depth bins spread uniformly over [min_depth, max_depth], the bin scores made weights by
  AdaBins' linear normalization (ReLU + 0.1, divided by their sum), depth the weighted sum of the
  bins' centres. (DINOv2's ``BNHead`` has its BatchNorm commented out: ``batchnorm=False``; DINOv3's
  head adds one and reads no [CLS] token, both options here.)
* ``SigLoss``: the scale-invariant loss of DINOv2's depth code (dinov2/eval/depth/models/losses/
  sigloss.py, from AdaBins and the Monocular-Depth-Estimation-Toolbox): sqrt(Var(g) + 0.15 mean(g)^2)
  with g = log(pred + 1e-3) - log(gt + 1e-3) over the pixels with depth, the variance left out for
  the first ``warm_iter`` iterations. mmseg's ``SiLogLoss`` is another formula (per image, 0.5).
* ``DepthFixedCrop`` and ``DepthColorAug``: the training transforms of the toolbox's and DINOv3's
  NYU pipelines (dinov3/eval/depth/transforms.py ``NYUCrop``, ``ColorAug``).
* ``WarmupOneCycleMomentum``: the beta1 schedule of DINOv3's ``WarmupOneCycleLR``
  (seg.engine holds its lr schedule).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmcv.transforms import BaseTransform
from mmengine.optim.scheduler.momentum_scheduler import MomentumSchedulerMixin
from mmengine.optim.scheduler.param_scheduler import _ParamScheduler
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS, PARAM_SCHEDULERS, TRANSFORMS
from torch import nn


@MODELS.register_module()
class LinearDepthHead(BaseDecodeHead):
    """DINOv2's linear depth head (see the module). The backbone gives one (patch map, [CLS]) pair per
    read block (``SemAIMViT(cls_token_outputs=True)``) when ``cls_token`` is set, else patch maps.
    ``channels`` must be the features' width: the blocks' widths, doubled with the [CLS] token.
    The bins are the ``num_classes`` outputs of mmseg's ``conv_seg`` (N(0, 0.01), zero bias);
    ``input_transform`` must be "multiple_select" (the head concatenates the blocks itself)."""

    def __init__(self, min_depth: float, max_depth: float, cls_token: bool = True, upsample: int = 4,
                 batchnorm: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.min_depth, self.max_depth, self.cls_token, self.upsample = min_depth, max_depth, cls_token, upsample
        width = sum(self.in_channels) * (2 if cls_token else 1)
        if width != self.channels:
            raise ValueError(f"LinearDepthHead: channels={self.channels} must be the features' width {width}")
        self.bn = build_norm_layer(self.norm_cfg or dict(type="BN"), width)[1] if batchnorm else nn.Identity()
        self.out_channels = 1  # what the estimator sees: one depth channel (mmseg sizes its slide buffers by it)

    def features(self, inputs) -> torch.Tensor:
        maps = []
        for i in self.in_index:
            x = inputs[i]
            if self.cls_token:
                if not isinstance(x, (tuple, list)):
                    raise ValueError("LinearDepthHead(cls_token=True) needs (patch map, [CLS]) pairs: set the "
                                     "backbone's cls_token_outputs=True")
                patches, cls = x
                x = torch.cat([patches, cls[:, :, None, None].expand_as(patches)], dim=1)
            maps.append(x)
        size = [s * self.upsample for s in maps[0].shape[2:]]
        return torch.cat([F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)
                          for x in maps], dim=1)

    def forward(self, inputs):
        x = self.features(inputs)
        if self.dropout is not None:
            x = self.dropout(x)
        return bins_to_depth(self.conv_seg(self.bn(x)), self.min_depth, self.max_depth)

    def loss_by_feat(self, depth: torch.Tensor, batch_data_samples) -> dict:
        gt = torch.stack([s.gt_depth_map.data for s in batch_data_samples])
        depth = F.interpolate(depth, size=gt.shape[2:], mode="bilinear", align_corners=self.align_corners)
        losses = self.loss_decode if isinstance(self.loss_decode, nn.ModuleList) else [self.loss_decode]
        return {loss.loss_name: loss(depth, gt) for loss in losses}


def bins_to_depth(scores: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
    """(N, bins, H, W) scores to (N, 1, H, W) depth: AdaBins' linear normalization over bins spread
    uniformly over [min_depth, max_depth] (DINOv2's ``bins_strategy="UD"``, ``norm_strategy="linear"``)."""
    weights = torch.relu(scores) + 0.1
    weights = weights / weights.sum(dim=1, keepdim=True)
    bins = torch.linspace(min_depth, max_depth, scores.shape[1], device=scores.device, dtype=scores.dtype)
    return torch.einsum("nkhw,k->nhw", weights, bins).unsqueeze(1)


@MODELS.register_module()
class SigLoss(nn.Module):
    """DINOv2's scale-invariant depth loss (see the module). Pixels without depth (0) are left out,
    and those beyond ``max_depth`` where it is given. The warm-up count is a buffer, so it is saved
    in checkpoints and a resumed run continues it."""

    def __init__(self, loss_weight: float = 1.0, max_depth: float | None = None, warm_up: bool = True,
                 warm_iter: int = 100, loss_name: str = "loss_sig"):
        super().__init__()
        self.loss_weight, self.max_depth, self.warm_up, self.warm_iter = loss_weight, max_depth, warm_up, warm_iter
        self._loss_name = loss_name
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        valid = gt > 0
        if self.max_depth is not None:
            valid &= gt <= self.max_depth
        g = torch.log(pred[valid] + 1e-3) - torch.log(gt[valid] + 1e-3)
        loss = 0.15 * g.mean() ** 2
        if self.warm_up and self.steps < self.warm_iter:
            self.steps += 1
        else:
            loss = loss + g.var()
        return self.loss_weight * torch.sqrt(loss)


@TRANSFORMS.register_module()
class DepthFixedCrop(BaseTransform):
    """One fixed box (x1, y1, x2, y2) cut from the image and its depth map: NYU's valid region
    (43, 45, 608, 472), the frame around it being the Kinect's unregistered border (``NYUCrop``)."""

    def __init__(self, box: tuple[int, int, int, int] = (43, 45, 608, 472)):
        self.box = tuple(box)

    def transform(self, results: dict) -> dict:
        x1, y1, x2, y2 = self.box
        h, w = results["img"].shape[:2]
        if x2 > w or y2 > h:
            raise ValueError(f"DepthFixedCrop: the box {self.box} does not fit the {w} x {h} image "
                             f"{results.get('img_path')} (NYU's images are 640 x 480)")
        for key in ["img", *results.get("seg_fields", [])]:
            results[key] = results[key][y1:y2, x1:x2]
        results["img_shape"] = results["img"].shape[:2]
        return results


@TRANSFORMS.register_module()
class DepthColorAug(BaseTransform):
    """The depth pipelines' colour augmentation (``ColorAug``), with probability ``prob``: on the
    0-255 image, a gamma power, a brightness factor and one factor per channel, each drawn
    uniformly from its range, then clipped to 0-255."""

    def __init__(self, prob: float = 0.5, gamma_range=(0.9, 1.1), brightness_range=(0.9, 1.1),
                 color_range=(0.9, 1.1)):
        self.prob, self.gamma_range, self.brightness_range, self.color_range = (
            prob, tuple(gamma_range), tuple(brightness_range), tuple(color_range))

    def transform(self, results: dict) -> dict:
        if np.random.rand() < self.prob:
            gamma = np.random.uniform(*self.gamma_range)
            brightness = np.random.uniform(*self.brightness_range)
            colors = np.random.uniform(*self.color_range, size=3)
            img = results["img"].astype(np.float32) ** gamma * brightness * colors
            results["img"] = np.clip(img, 0, 255).astype(np.float32)
        return results


@PARAM_SCHEDULERS.register_module()
class WarmupOneCycleMomentum(MomentumSchedulerMixin, _ParamScheduler):
    """beta1 as DINOv3's ``WarmupOneCycleLR`` sets it (dinov3/eval/depth/schedulers.py, use_beta1):
    0 during the ``warmup`` iterations (its code's value there, which its published numbers were
    trained with), then annealed by a cosine from ``base`` to ``peak`` over the rest of ``total``."""

    def __init__(self, optimizer, warmup: int, total: int, base: float = 0.85, peak: float = 0.95, **kwargs):
        self.warmup, self.total, self.base, self.peak = warmup, total, base, peak
        super().__init__(optimizer, **{**kwargs, "begin": 0, "end": total, "by_epoch": False})

    def momentum(self, t: int) -> float:
        if t < self.warmup:
            return 0.0
        pct = (t - self.warmup) / (self.total - self.warmup)
        return self.peak + (self.base - self.peak) / 2 * (math.cos(math.pi * pct) + 1)

    def _get_value(self):
        return [self.momentum(self.last_step) for _ in self.base_values]
