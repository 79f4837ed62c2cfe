# The model and optimization of the paper's UperNet recipe (Tab. S4), without a dataset: UperNet +
# FCN auxiliary head on a SemAIM ViT-B/16 (features of blocks 3, 5, 7, 11 through Feature2Pyramid),
# drop path 0.1, AdamW lr 4e-4, weight decay 0.05, layer decay 0.65, 1500-iteration linear warm-up
# then poly over 160k iterations, AMP, sliding-window test at 512. Leaves add a dataset base.
_base_ = [
    "mmseg::_base_/models/upernet_mae.py",
    "mmseg::_base_/default_runtime.py",
    "mmseg::_base_/schedules/schedule_160k.py",
    "../semaim_runtime.py",
]
# (the crop size and the evaluators come with the leaf: mmseg's dataset bases define them too)
model = dict(
    data_preprocessor=dict(size=(512, 512)),
    backbone=dict(
        _delete_=True,
        type="SemAIMViT",
        checkpoint="runs/semaim_b/encoder.pth",  # an exported SemAIM encoder
        img_size=(512, 512),
        patch_size=16,
        embed_dims=768,
        num_layers=12,
        num_heads=12,
        mlp_ratio=4,
        drop_path_rate=0.1,
        norm_cfg=dict(type="LN", eps=1e-6),
        out_indices=[3, 5, 7, 11],
    ),
    neck=dict(embed_dim=768, rescales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[768, 768, 768, 768], num_classes=150, channels=768),
    auxiliary_head=dict(in_channels=768, num_classes=150),
    test_cfg=dict(mode="slide", crop_size=(512, 512), stride=(341, 341)),
)
optim_wrapper = dict(
    _delete_=True,
    type="AmpOptimWrapper",
    optimizer=dict(type="AdamW", lr=4e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.65),  # the depth is read from the backbone
    constructor="SemAIMLayerDecayOptimizerConstructor",
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
# scalars as JSON lines (vis_data/scalars.json) and TensorBoard events, side by side
vis_backends = [dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")]
visualizer = dict(type="SegLocalVisualizer", vis_backends=vis_backends, name="visualizer")
