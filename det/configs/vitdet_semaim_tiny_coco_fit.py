# A fit check: the tiny detector trains on the first 4 tiny_coco training images (tiny_coco_fit)
# and is scored on the same images. A working pipeline fits them (high AP); a broken one (wrong
# targets, lost weights, a frozen backbone...) cannot. Inherits everything else from the tiny config.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from .vitdet_semaim_tiny_coco import SIZE, dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader.train.dataset.names = dataloader.test.dataset.names = "tiny_coco_fit"
# the images as they will be scored (no scale jitter or crops), flipped at random
dataloader.train.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=SIZE, max_size=SIZE),
                                         L(T.RandomFlip)(horizontal=True)]
dataloader.train.mapper.recompute_boxes = False
# 150 iterations at lr 1e-3 with ViTDet's step schedule: the 4 images are fitted in the last 17, at
# the lower lr. Measured on one thread (box AP50 / mask AP; pass marks 10 / 2, tools/lib/fit_checks.py):
# random-init encoder 21.9 / 9.0, the demo's encoder 18.0 / 3.2. Tried and worse for the demo's
# encoder: lr 2e-3 (11.4 / 5.4), 200 iterations (12.5 / 5.5), 100 iterations with milestones at
# 0.6 and 0.85 and no drop path (12.7 / 1.6). The demo's pretrained encoder fits masks more slowly
# than a random init.
optimizer.lr = 1e-3
train.seed = 0  # detectron2 draws a random seed otherwise: a fit check must give the same number each run
train.max_iter = 150
train.eval_period = train.checkpointer.period = train.max_iter
train.output_dir = "output/vitdet_semaim_tiny_coco_fit"
