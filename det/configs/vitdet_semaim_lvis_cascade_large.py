# ViTDet Cascade Mask R-CNN, ViT-L/16 SemAIM backbone, LVIS v1: ViTDet's
# LVIS/cascade_mask_rcnn_vitdet_l_100ep.py (vitdet_semaim_lvis_cascade.py with ViTDet's ViT-L settings).
from det.recipe import to_vit_large

from .vitdet_semaim_lvis_cascade import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

to_vit_large(model.backbone.net, optimizer.params.lr_factor_func)
train.init_checkpoint = "runs/semaim_l/encoder.pth"
train.output_dir = "output/vitdet_semaim_lvis_cascade_l"
