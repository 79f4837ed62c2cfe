"""The authors' released SemAIM code, imported unmodified from a checkout, for the parity check and
the pretraining benchmark. On a current stack it needs shims, applied in this process only:
``np.float`` (removed from numpy), ``Tensor.cuda()`` and ``torch.cuda.synchronize()`` as no-ops
without a GPU, ``torch._six.inf`` (removed from torch), and timm's ``add_weight_decay`` under its
current name ``param_groups_weight_decay``."""
from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import numpy as np
import torch


def import_official(path: Path) -> types.SimpleNamespace:
    if not (path / "models" / "models_semaim.py").is_file():
        raise SystemExit(f"{path} is not a checkout of the official SemAIM code (no models/models_semaim.py)")
    if not hasattr(np, "float"):
        np.float = float  # util/pos_embed.py
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self  # the order code calls .cuda() on CPU tensors
        torch.cuda.synchronize = lambda *a, **k: None  # engines/engine_pretrain.py, after every step
    sys.modules.setdefault("torch._six", types.SimpleNamespace(inf=math.inf))  # util/misc.py
    import timm.optim
    import timm.optim.optim_factory as optim_factory
    optim_factory.add_weight_decay = timm.optim.param_groups_weight_decay  # main_pretrain.py's optimizer groups
    sys.path.insert(0, str(path))
    import engines.engine_pretrain as engine
    import models.models_clip as clip
    import models.models_semaim as semaim
    import util.lr_sched as lr_sched
    return types.SimpleNamespace(semaim=semaim, clip=clip, engine=engine, lr_sched=lr_sched,
                                 add_weight_decay=optim_factory.add_weight_decay)


def build_aim(off, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float,
              predict_feature: str = "none", out_dim: int = 512):
    """The authors' ``AimViT`` as their ViT-B pixel recipe builds it (semantic order from the
    [CLS] similarity, MLP head, 9x9 Gaussian-blurred normalized pixel targets, L2 loss,
    decoder depth = encoder depth)."""
    pixel = predict_feature == "none"
    return off.semaim.AimViT(
        img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
        mlp_ratio=mlp_ratio, out_dim=out_dim, query_depth=depth, permutation_type="attention_center",
        attention_type="cls", prediction_head_type="MLP", gaussian_kernel_size=9 if pixel else None,
        gaussian_sigma=1 if pixel else None, loss_type="L2", predict_feature=predict_feature, norm_pix_loss=True)
