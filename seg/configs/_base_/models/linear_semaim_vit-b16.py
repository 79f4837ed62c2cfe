# Frozen-feature linear segmentation, DINOv3's protocol (dinov3/eval/segmentation/configs/
# config-ade20k-linear-training.yaml and linear_head.py), without a dataset: the paper's UperNet
# model base with its backbone frozen (no gradient, eval mode, no drop path), the last block's
# patch tokens through the encoder's final norm, and in place of the neck and heads Dropout2d 0.1,
# BatchNorm and a 1 x 1 conv; AdamW lr 1e-3, betas (0.9, 0.999), weight decay 1e-3, no gradient
# clipping, fp32; DINOv3's WarmupOneCycleLR (1500 warm-up iterations from 1e-6 x lr, cosine to 0
# over 40k iterations); cross-entropy; slide inference 512 / stride 341. Leaves add a dataset base.
_base_ = ["./upernet_semaim_vit-b16.py"]
norm_cfg = dict(type="SyncBN", requires_grad=True)  # DINOv3's nn.SyncBatchNorm (BN on one process)
model = dict(
    backbone=dict(
        drop_path_rate=0.0,
        out_indices=[11],  # DINOv3's backbone_out_layers: LAST
        final_norm=True,  # use_backbone_norm
        norm_outputs=True,
        frozen=True,
    ),
    neck=None,
    decode_head=dict(
        _delete_=True,
        type="LinearBNHead",
        in_channels=[768],
        in_index=[0],
        input_transform="resize_concat",
        channels=768,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    auxiliary_head=None,
)
optim_wrapper = dict(_delete_=True, type="OptimWrapper",
                     optimizer=dict(type="AdamW", lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-3))
param_scheduler = [dict(type="WarmupOneCycleLR", warmup=1500, warmup_ratio=1e-6, total=40000, by_epoch=False)]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=40000, val_interval=5000)  # DINOv3's eval_interval
default_hooks = dict(checkpoint=dict(interval=5000))
