# ViTDet Mask R-CNN, ViT-B/16 SemAIM backbone, COCO 2017: the paper's recipe (Tab. S3 + ViTDet).
#   python det/train_net.py --config det/configs/vitdet_semaim.py train.init_checkpoint=runs/semaim_b/encoder.pth
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from det.recipe import epochs_to_iters, vit_lr_decay

from .common.coco_loader_lsj import dataloader

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model  # ViT-B, drop path 0.1, SFP, LN heads

train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.ddp.fp16_compression = True
train.init_checkpoint = "runs/semaim_b/encoder.pth"  # an exported SemAIM encoder (tools/convert_checkpoint.py)
train.output_dir = "output/vitdet_semaim_b"

EPOCHS, WARMUP_EPOCHS = 100, 0.25
dataloader.train.total_batch_size = 64
train.max_iter = epochs_to_iters(EPOCHS, dataloader.train.total_batch_size)
train.eval_period = train.checkpointer.period = epochs_to_iters(10, dataloader.train.total_batch_size)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[round(train.max_iter * 88.9 / 100), round(train.max_iter * 96.3 / 100)],  # ViTDet's 100ep steps
        num_updates=train.max_iter,
    ),
    warmup_length=WARMUP_EPOCHS * epochs_to_iters(1, dataloader.train.total_batch_size) / train.max_iter,
    warmup_factor=0.001,
)

optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.lr = 8e-5
optimizer.weight_decay = 0.1
optimizer.params.lr_factor_func = L(vit_lr_decay)(num_layers="${model.backbone.net.depth}", lr_decay_rate=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
