# Minutes on a CPU: the COCO-Stuff-layout maps derived from the bundled tiny_coco (`make data`),
# the 80 thing classes, the pretraining demo's encoder (ViT-Tiny width, 4 blocks), 256 px crops.
# The paper's model base + mmseg's COCO-Stuff-164k dataset base (the derived maps use its layout).
_base_ = ["./_base_/models/upernet_semaim_vit-b16.py", "mmseg::_base_/datasets/coco-stuff164k.py"]
crop_size = (256, 256)
norm_cfg = dict(type="BN", requires_grad=True)  # one process: no SyncBN
thing_classes = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush")
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(checkpoint="runs/demo/encoder.pth", img_size=crop_size, embed_dims=192, num_layers=4,
                  num_heads=3, out_indices=[0, 1, 2, 3]),
    neck=dict(embed_dim=192, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=[192] * 4, channels=64, num_classes=80, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=192, channels=64, num_classes=80, norm_cfg=norm_cfg),
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(170, 170)),
)
data_root = "data/derived/coco_stuff"
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomResize", scale=(512, 256), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(512, 256), keep_ratio=True),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]
metainfo = dict(classes=thing_classes)
train_dataloader = dict(batch_size=4, num_workers=2, persistent_workers=False,
                        dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(num_workers=2, persistent_workers=False,
                      dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type="SemAIMIoUMetric", iou_metrics=["mIoU"])  # + per-class JSON (seg/tools)
test_evaluator = val_evaluator
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(lr=2e-4))  # CPU: no AMP
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=10),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=10, end=100, by_epoch=False),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=100, val_interval=100)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=100),
                     visualization=dict(type="SegVisualizationHook", draw=False))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo"))
# bit-reproducible on the CPU, busy or idle: the backward of the relative-position bias lookup
# (index_put with accumulate) otherwise sums in an order that varies with the machine's load
randomness = dict(seed=0, deterministic=True)
# --tta (seg/tools/test.py): two scales x flip, small enough for a CPU
tta_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="TestTimeAug", transforms=[
        [dict(type="Resize", scale=(512, 256), keep_ratio=True),
         dict(type="Resize", scale=(768, 384), keep_ratio=True)],
        [dict(type="RandomFlip", prob=0.0, direction="horizontal"),
         dict(type="RandomFlip", prob=1.0, direction="horizontal")],
        [dict(type="LoadAnnotations")],
        [dict(type="PackSegInputs")],
    ]),
]
