# A fit check of the frozen-feature linear depth protocol, on scenes of known depth (a slanted wall
# and a card in front of it, textured with bundled images: tools/lib/depth_scenes.py, written by
# `make data` to data/derived/depth_scenes): the first 4 training scenes at 128 x 160, scored on the
# same 4 at their 480 x 640 size. The demo's encoder (ViT-Tiny width, 4 blocks) frozen, its last
# block's patch tokens with the [CLS] token, then DINOv2's linear head. Only the head learns, so a
# working pipeline fits the depth far better than a constant while the encoder's weights stay as
# loaded. A larger lr and shorter warm-ups than the NYU recipe's: 300 iterations (12 s on 2 cores),
# not 38400.
_base_ = ["./_base_/models/lineardepth_semaim_vit-b16.py", "./_base_/datasets/nyu_416x544.py"]
fit_size = (128, 160)
model = dict(
    data_preprocessor=dict(size=fit_size),
    backbone=dict(checkpoint="runs/demo/encoder.pth", img_size=fit_size, embed_dims=192, num_layers=4, num_heads=3,
                  out_indices=[3]),
    decode_head=dict(in_channels=[192], channels=192 * 2, loss_decode=dict(warm_iter=5)),
    test_cfg=dict(crop_size=fit_size, stride=fit_size),
)
fit_train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadDepthAnnotation", depth_rescale_factor=1e-3),
    dict(type="Resize", scale=fit_size[::-1], keep_ratio=False),
    dict(type="PackSegInputs"),
]
fit_test_pipeline = [  # predictions are scored at the original size, against the original depth
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=fit_size[::-1], keep_ratio=False),
    dict(type="LoadDepthAnnotation", depth_rescale_factor=1e-3),
    dict(type="PackSegInputs"),
]
fit_scenes = dict(img_path="images/train", depth_map_path="annotations/train")
data_root = "data/derived/depth_scenes"
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, data_prefix=fit_scenes, pipeline=fit_train_pipeline,
                                     indices=4))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, data_prefix=fit_scenes, pipeline=fit_test_pipeline,
                                   indices=4))
test_dataloader = val_dataloader
val_evaluator = dict(crop_type=None)  # the scenes have no unregistered border
test_evaluator = val_evaluator
optim_wrapper = dict(optimizer=dict(lr=1e-2))
param_scheduler = [
    dict(type="WarmupOneCycleLR", warmup=5, warmup_ratio=0.0, final_div_factor=1000.0, total=300, by_epoch=False),
    dict(type="WarmupOneCycleMomentum", warmup=5, total=300, base=0.85, peak=0.95),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=300, val_interval=300)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=300))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo"))
randomness = dict(seed=0, deterministic=True)
