# The paper's ablation schedule: 12.5 epochs at batch 16 (lr scaled linearly from the 64-image
# recipe; the paper does not state the ablation lr).
from det.recipe import epochs_to_iters

from .vitdet_semaim import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader.train.total_batch_size = 16
optimizer.lr = 8e-5 * 16 / 64
train.max_iter = epochs_to_iters(12.5, 16)
train.eval_period = train.checkpointer.period = epochs_to_iters(2.5, 16)
train.output_dir = "output/vitdet_semaim_b_ablation"
