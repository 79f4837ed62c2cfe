# ViTDet Cascade Mask R-CNN, ViT-B/16 SemAIM backbone, COCO 2017: ViTDet's
# cascade_mask_rcnn_vitdet_b_100ep.py heads on vitdet_semaim.py (same backbone loader, layer
# decay, schedule and data).
#   python -m det.train_net --config det/configs/vitdet_semaim_cascade.py train.init_checkpoint=ENCODER.pth
from det.recipe import to_cascade

from .vitdet_semaim import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

to_cascade(model.roi_heads)
train.output_dir = "output/vitdet_semaim_cascade_b"
