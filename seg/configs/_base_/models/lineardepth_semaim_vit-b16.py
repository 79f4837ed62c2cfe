# Frozen-feature linear depth, DINOv2's protocol (its paper's section 7.4 "lin. 1" and dinov2/eval/
# depth: linear_head.py BNHead, decode_head.py, losses/sigloss.py), without a dataset: the paper's
# UperNet model base's SemAIM ViT-B/16, frozen (no gradient, eval mode, no drop path), its last
# block's patch tokens without the final norm (get_intermediate_layers(norm=False)), the [CLS] token
# concatenated to each, upsampled x 4, a 1 x 1 conv to 256 bins over 0.001-10 m with AdaBins'
# linear normalization, no BatchNorm (BNHead's is commented out), DINOv2's SigLoss (variance term
# after 100 warm-up iterations).
# DINOv2 never released its depth training recipe (facebookresearch/dinov2 issue #54): the
# optimization is DINOv3's released NYU config (dinov3/eval/depth/configs/config-nyu.yaml): AdamW lr
# 3e-4, beta2 0.99, weight decay 1e-4, gradient clip 35, batch 16, 38400 iterations, its
# WarmupOneCycleLR (12800 warm-up iterations, final_div_factor 1000, beta1 0 in the warm-up then
# 0.85 -> 0.95), fp32. Whole-image test with the flipped image's prediction averaged in
# (DINOv3's use_tta). Leaves add a dataset base. tta_model: mmseg's merges class scores, not depth.
_base_ = ["./upernet_semaim_vit-b16.py"]  # the same backbone; the model, neck, heads and optimization replaced
model = dict(
    type="DepthEstimator",
    data_preprocessor=dict(size=(416, 544), seg_pad_val=0),  # 0 = no depth
    backbone=dict(
        img_size=(416, 544),  # the training crop; other sizes interpolate the position table
        drop_path_rate=0.0,
        out_indices=[11],  # lin. 1: the last block
        final_norm=False,
        frozen=True,
        cls_token_outputs=True,
        rel_pos_bias=False,
    ),
    neck=None,
    decode_head=dict(
        _delete_=True,
        type="LinearDepthHead",
        in_channels=[768],
        in_index=[0],
        input_transform="multiple_select",
        channels=768 * 2,  # patch token + [CLS]
        num_classes=256,  # the bins
        min_depth=1e-3,
        max_depth=10.0,
        cls_token=True,
        upsample=4,
        batchnorm=False,
        dropout_ratio=0.0,
        align_corners=False,
        loss_decode=dict(type="SigLoss", loss_weight=1.0, warm_up=True, warm_iter=100),
    ),
    auxiliary_head=None,
    test_cfg=dict(_delete_=True, mode="slide_flip", crop_size=(480, 640), stride=(480, 640)),  # NYU's whole image
)
optim_wrapper = dict(_delete_=True, type="OptimWrapper",
                     optimizer=dict(type="AdamW", lr=3e-4, betas=(0.9, 0.99), weight_decay=1e-4),
                     clip_grad=dict(max_norm=35, norm_type=2))
param_scheduler = [
    dict(type="WarmupOneCycleLR", warmup=12800, warmup_ratio=0.0, final_div_factor=1000.0, total=38400,
         by_epoch=False),
    dict(type="WarmupOneCycleMomentum", warmup=12800, total=38400, base=0.85, peak=0.95),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=38400, val_interval=3840)
default_hooks = dict(checkpoint=dict(interval=3840))
tta_model = None
