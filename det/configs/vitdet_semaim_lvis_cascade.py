# ViTDet Cascade Mask R-CNN, ViT-B/16 SemAIM backbone, LVIS v1: ViTDet's
# LVIS/cascade_mask_rcnn_vitdet_b_100ep.py on vitdet_semaim_lvis.py (its data, federated loss, 300
# detections per image, schedule and lr, in each of the three Cascade stages).
#   python -m det.train_net --config det/configs/vitdet_semaim_lvis_cascade.py train.init_checkpoint=ENCODER.pth
from det.recipe import to_cascade

from .vitdet_semaim_lvis import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

to_cascade(model.roi_heads)
train.output_dir = "output/vitdet_semaim_lvis_cascade_b"
