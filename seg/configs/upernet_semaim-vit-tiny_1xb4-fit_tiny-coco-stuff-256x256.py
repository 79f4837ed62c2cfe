# A fit check: the tiny UperNet trains on the first 4 images of the derived training maps and is
# scored on the same 4 images, at one fixed 256 x 256 size. A working pipeline fits them (high
# mIoU); a broken one (wrong labels, lost backbone weights, no gradient...) cannot.
_base_ = ["./upernet_semaim-vit-tiny_1xb4-100iters_tiny-coco-stuff-256x256.py"]
fit_train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="Resize", scale=(256, 256), keep_ratio=False),
    dict(type="PackSegInputs"),
]
fit_test_pipeline = [  # predictions are scored at the original size, against the original maps
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(256, 256), keep_ratio=False),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]
fit_images = dict(img_path="images/train2017", seg_map_path="annotations/train2017")
train_dataloader = dict(dataset=dict(pipeline=fit_train_pipeline, data_prefix=fit_images, indices=4))
val_dataloader = dict(dataset=dict(pipeline=fit_test_pipeline, data_prefix=fit_images, indices=4))
test_dataloader = val_dataloader
model = dict(test_cfg=dict(mode="whole"))
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-2, by_epoch=False, begin=0, end=5),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=5, end=60, by_epoch=False),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=60, val_interval=60)
default_hooks = dict(checkpoint=dict(interval=60))
