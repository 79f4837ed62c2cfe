# ViT-L/16 backbone (ViTDet's ViT-L settings: drop path 0.4, global attention every 6th block,
# layer decay 0.8); the schedule is the ViT-B recipe's.
from .vitdet_semaim import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.net.embed_dim = 1024
model.backbone.net.depth = 24
model.backbone.net.num_heads = 16
model.backbone.net.drop_path_rate = 0.4
model.backbone.net.window_block_indexes = [i for i in range(24) if i % 6 != 5]  # global: 5, 11, 17, 23
optimizer.params.lr_factor_func.lr_decay_rate = 0.8
train.init_checkpoint = "runs/semaim_l/encoder.pth"
train.output_dir = "output/vitdet_semaim_l"
