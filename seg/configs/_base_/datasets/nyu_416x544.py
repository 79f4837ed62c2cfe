# NYU Depth v2 as DINOv3's released NYU config trains and tests it (dinov3/eval/depth/configs/
# config-nyu.yaml and transforms.py; the Monocular-Depth-Estimation-Toolbox's NYU pipeline, which
# DINOv2 evaluated with): training images cut to NYU's valid region (43, 45)-(608, 472), rotated by
# up to 2.5 degrees with probability 0.5 (depth by nearest neighbour, the border 0 = no depth),
# flipped with probability 0.5, a random 416 x 544 crop, then with probability 0.5 gamma 0.9-1.1,
# brightness 0.75-1.25 and per-channel colour 0.9-1.1; testing on the whole 480 x 640 image, its
# errors counted inside the Eigen crop over depths in (0.001, 10) m. Depth PNGs are millimetres.
dataset_type = "NYUDataset"
data_root = "data/nyu"
crop_size = (416, 544)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadDepthAnnotation", depth_rescale_factor=1e-3),
    dict(type="DepthFixedCrop", box=(43, 45, 608, 472)),
    dict(type="RandomRotate", prob=0.5, degree=2.5, pad_val=0, seg_pad_val=0),
    dict(type="RandomFlip", prob=0.5),
    dict(type="RandomCrop", crop_size=crop_size),
    dict(type="DepthColorAug", prob=0.5, gamma_range=(0.9, 1.1), brightness_range=(0.75, 1.25),
         color_range=(0.9, 1.1)),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadDepthAnnotation", depth_rescale_factor=1e-3),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path="images/train", depth_map_path="annotations/train"),
                 pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, test_mode=True,
                 data_prefix=dict(img_path="images/test", depth_map_path="annotations/test"),
                 pipeline=test_pipeline),
)
test_dataloader = val_dataloader
# + depth_metrics.json (seg/tools); --out writes 16-bit PNGs in millimetres
val_evaluator = dict(type="SemAIMDepthMetric", min_depth_eval=1e-3, max_depth_eval=10.0, crop_type="nyu_crop",
                     depth_scale_factor=1000.0)
test_evaluator = val_evaluator
