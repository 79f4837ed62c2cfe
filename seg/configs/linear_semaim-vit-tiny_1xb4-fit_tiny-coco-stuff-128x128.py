# A fit check of the frozen-feature linear protocol, on the UperNet fit check's data (the first 4
# derived training maps, scored on the same 4 at 128 x 128): the demo's encoder (ViT-Tiny width,
# 4 blocks) frozen, its last block through the final norm, then LinearBNHead. Only the head learns,
# so a working pipeline fits the maps better than chance while the encoder's weights stay as loaded.
# A larger lr than DINOv3's 1e-3: 60 iterations, not 40k.
_base_ = ["./upernet_semaim-vit-tiny_1xb4-fit_tiny-coco-stuff-128x128.py"]
model = dict(
    _delete_=True,
    type="EncoderDecoder",
    data_preprocessor={{_base_.model.data_preprocessor}},
    backbone=dict(type="SemAIMViT", checkpoint="runs/demo/encoder.pth", img_size=(128, 128), patch_size=16,
                  embed_dims=192, num_layers=4, num_heads=3, mlp_ratio=4, norm_cfg=dict(type="LN", eps=1e-6),
                  out_indices=[3], final_norm=True, norm_outputs=True, frozen=True),
    decode_head=dict(type="LinearBNHead", in_channels=[192], in_index=[0], input_transform="resize_concat",
                     channels=192, dropout_ratio=0.1, num_classes=80, norm_cfg=dict(type="BN", requires_grad=True),
                     align_corners=False,
                     loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)
optim_wrapper = dict(_delete_=True, type="OptimWrapper",
                     optimizer=dict(type="AdamW", lr=1e-2, betas=(0.9, 0.999), weight_decay=1e-3))
param_scheduler = [dict(type="WarmupOneCycleLR", warmup=5, warmup_ratio=1e-2, total=60, by_epoch=False)]
