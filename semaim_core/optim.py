"""AdamW with the MAE/SemAIM parameter groups and the per-iteration warm-up + half-cycle cosine."""
from __future__ import annotations

import torch
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    """No weight decay on biases, norms (1-D parameters), ``pos_embed`` and ``cls_token``; frozen
    parameters (the teacher, the fixed position table) are left out."""
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=model.no_weight_decay())
    fused = all(p.is_cuda for g in groups for p in g["params"]) and torch.cuda.is_available()
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def build_scheduler(optimizer, total_steps: int, warmup_steps: int, min_lr: float = 0.0) -> CosineLRScheduler:
    """Linear warm-up from 0, then half-cycle cosine to ``min_lr``, both per iteration.
    Stateless apart from the step it is given, so resuming only needs the step."""
    return CosineLRScheduler(optimizer, t_initial=max(1, total_steps - warmup_steps), lr_min=min_lr,
                             warmup_t=warmup_steps, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
