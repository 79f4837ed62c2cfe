# ViT-L/16 backbone (ViTDet's ViT-L settings: drop path 0.4, global attention every 6th block,
# layer decay 0.8); the schedule is the ViT-B recipe's.
from det.recipe import to_vit_large

from .vitdet_semaim import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

to_vit_large(model.backbone.net, optimizer.params.lr_factor_func)
train.init_checkpoint = "runs/semaim_l/encoder.pth"
train.output_dir = "output/vitdet_semaim_l"
