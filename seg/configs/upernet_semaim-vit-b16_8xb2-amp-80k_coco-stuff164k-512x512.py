# UperNet on a SemAIM ViT-B/16 for COCO-Stuff-164k (171 classes): the paper's model and optimizer
# (_base_/models) on mmseg's own COCO-Stuff-164k dataset base (data/coco_stuff164k with
# images/{train,val}2017 and annotations/{train,val}2017/*_labelTrainIds.png) and its 80k schedule.
#   python -m seg.tools.train upernet_semaim-vit-b16_8xb2-amp-80k_coco-stuff164k-512x512.py \
#       --cfg-options model.backbone.checkpoint=runs/semaim_b/encoder.pth
_base_ = ["./_base_/models/upernet_semaim_vit-b16.py", "mmseg::_base_/datasets/coco-stuff164k.py"]
model = dict(decode_head=dict(num_classes=171), auxiliary_head=dict(num_classes=171))
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=1500, end=80000, by_epoch=False),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=80000, val_interval=8000)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=8000))
train_dataloader = dict(batch_size=2)  # x 8 GPUs = 16
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
val_evaluator = dict(type="SemAIMIoUMetric", iou_metrics=["mIoU"])  # + per-class JSON (seg/tools)
test_evaluator = val_evaluator
