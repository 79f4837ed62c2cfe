# ViTDet Mask R-CNN, ViT-B/16 SemAIM backbone, COCO 2017: the paper's recipe (Tab. S3 + ViTDet).
#   python -m det.train_net --config det/configs/vitdet_semaim.py train.init_checkpoint=runs/semaim_b/encoder.pth
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from det.recipe import epochs_to_iters, vit_lr_decay, vitdet_lr_schedule

from .common.coco_loader_lsj import dataloader

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model  # ViT-B, drop path 0.1, SFP, LN heads

train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.ddp.fp16_compression = True
train.init_checkpoint = "runs/semaim_b/encoder.pth"  # an exported SemAIM encoder (tools/convert_checkpoint.py)
train.output_dir = "output/vitdet_semaim_b"

dataloader.train.total_batch_size = 64
train.max_iter = epochs_to_iters(100, dataloader.train.total_batch_size)
train.eval_period = train.checkpointer.period = epochs_to_iters(10, dataloader.train.total_batch_size)
# stop early (with a checkpoint) at this iteration; a later --resume continues. train.max_iter sets the
# lr schedule, so changing it is a recipe change; this does not
train.stop_after_iter = None
train.seed = 0  # detectron2 draws a new seed at each start otherwise: no two runs, and no resume, would agree
# milestones follow train.max_iter, the 0.25-epoch warm-up the batch size: a config sets max_iter only
lr_multiplier = L(vitdet_lr_schedule)(
    max_iter="${train.max_iter}",
    warmup_iters=L(epochs_to_iters)(epochs=0.25, batch_size="${dataloader.train.total_batch_size}"),
)

optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.lr = 8e-5
optimizer.weight_decay = 0.1
optimizer.params.lr_factor_func = L(vit_lr_decay)(num_layers="${model.backbone.net.depth}", lr_decay_rate=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
