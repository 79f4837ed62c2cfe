# UperNet on a SemAIM ViT-L/16 (the paper's other size), ADE20K 512x512, 160k iterations, batch 16.
# The ViT-L recipe follows mmseg's BEiT-L UperNet config (beit-large_upernet_8xb1-160k_ade20k-640x640):
# features of blocks 7, 11, 15, 23, drop path 0.2, AdamW lr 2e-5, layer decay 0.95, 3000-iteration
# warm-up; crop, batch and schedule stay the paper's ViT-B ones.
#   python -m seg.tools.train upernet_semaim-vit-l16_8xb2-amp-160k_ade20k-512x512.py \
#       --cfg-options model.backbone.checkpoint=runs/semaim_l/encoder.pth
_base_ = ["./upernet_semaim.py"]
model = dict(
    backbone=dict(checkpoint="runs/semaim_l/encoder.pth", embed_dims=1024, num_layers=24, num_heads=16,
                  drop_path_rate=0.2, out_indices=[7, 11, 15, 23]),
    neck=dict(embed_dim=1024),
    decode_head=dict(in_channels=[1024] * 4, channels=1024),
    auxiliary_head=dict(in_channels=1024),
)
optim_wrapper = dict(optimizer=dict(lr=2e-5), paramwise_cfg=dict(decay_rate=0.95))
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=3000),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=3000, end=160000, by_epoch=False),
]
