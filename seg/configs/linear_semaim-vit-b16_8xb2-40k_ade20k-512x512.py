# Frozen-feature linear segmentation on ADE20K, DINOv3's protocol (see the model base): batch 16
# (8 GPUs x 2), 512 crops of images resized to short side 512 x 0.5-2.0, flip, photometric
# distortion (mmseg's ADE20K pipeline, as DINOv3's transforms), the 0 label ignored.
#   python -m seg.tools.train linear_semaim-vit-b16_8xb2-40k_ade20k-512x512.py \
#       --cfg-options model.backbone.checkpoint=runs/semaim_b/encoder.pth
_base_ = ["./_base_/models/linear_semaim_vit-b16.py", "mmseg::_base_/datasets/ade20k.py"]
train_dataloader = dict(batch_size=2)  # x 8 GPUs = 16
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
val_evaluator = dict(type="SemAIMIoUMetric", iou_metrics=["mIoU"])  # + per-class JSON (seg/tools)
test_evaluator = val_evaluator
