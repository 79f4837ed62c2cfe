# The paper's ablation schedule: 12.5 epochs at batch 16 (lr scaled linearly from the 64-image
# recipe; the paper does not state the ablation lr).
from det.recipe import epochs_to_iters

from .vitdet_semaim import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader.train.total_batch_size = 16
optimizer.lr = 8e-5 * 16 / 64
train.max_iter = epochs_to_iters(12.5, 16)
train.eval_period = train.checkpointer.period = epochs_to_iters(2.5, 16)
lr_multiplier.scheduler.num_updates = train.max_iter
lr_multiplier.scheduler.milestones = [round(train.max_iter * 88.9 / 100), round(train.max_iter * 96.3 / 100)]
lr_multiplier.warmup_length = 0.25 * epochs_to_iters(1, 16) / train.max_iter
train.output_dir = "output/vitdet_semaim_b_ablation"
