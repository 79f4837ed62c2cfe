# The paper's recipe (Tab. S4): UperNet on a SemAIM ViT-B/16, ADE20K 512x512, 160k iterations,
# batch 16 (8 GPUs x 2); the model and optimization are in _base_/models/upernet_semaim_vit-b16.py.
# Also reachable under mmseg's naming: upernet_semaim-vit-b16_8xb2-amp-160k_ade20k-512x512.py.
#   python -m seg.tools.train upernet_semaim.py --cfg-options model.backbone.checkpoint=runs/semaim_b/encoder.pth
_base_ = ["./_base_/models/upernet_semaim_vit-b16.py", "mmseg::_base_/datasets/ade20k.py"]
train_dataloader = dict(batch_size=2)  # x 8 GPUs = 16
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
val_evaluator = dict(type="SemAIMIoUMetric", iou_metrics=["mIoU"])  # + per-class JSON (seg/tools)
test_evaluator = val_evaluator
