# ViTDet Cascade Mask R-CNN, ViT-L/16 SemAIM backbone, COCO 2017: ViTDet's
# cascade_mask_rcnn_vitdet_l_100ep.py (the ViT-L settings of vitdet_semaim_large.py).
from det.recipe import to_cascade

from .vitdet_semaim_large import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

to_cascade(model.roi_heads)
train.output_dir = "output/vitdet_semaim_cascade_l"
