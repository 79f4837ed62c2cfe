# A fit check: the tiny detector trains on the first 4 tiny_coco training images (tiny_coco_fit)
# and is scored on the same images. A working pipeline fits them (high AP); a broken one (wrong
# targets, lost weights, a frozen backbone...) cannot. Inherits the tiny config's model and optimizer.
#
# Fitted, not regularized: 160 px, the images exactly as they are scored (no flip, no scale jitter
# or crops), no drop path, 200 iterations at lr 1e-3 with ViTDet's step schedule. Box AP50 / mask AP
# on the 4 images, from the demo's encoder (2 threads, 2 loader workers, as make demo runs it) and
# from a random-init encoder (1 thread, as the tests run it): 64.5 / 27.8 and 60.2 / 30.3 (pass
# marks 30 / 12, tools/lib/fit_checks.py). The same commit's demo on another CPU model (its own
# float kernels, the same thread count) scored 44.7 / 23.0: the marks leave room for that. The
# earlier recipe (256 px, random flips, drop path 0.1, 150 iterations) stopped mid-fit
# (classification and mask losses still near 0.5-0.7), and its AP swung with the thread count:
# 18.0 / 3.2 on one thread and 3.0 / 0.8 on two from the demo's encoder.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from .vitdet_semaim_tiny_coco import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

FIT_SIZE = 160
model.backbone.net.img_size = model.backbone.square_pad = FIT_SIZE
model.backbone.net.drop_path_rate = 0.0
dataloader.train.dataset.names = dataloader.test.dataset.names = "tiny_coco_fit"
dataloader.train.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=FIT_SIZE, max_size=FIT_SIZE)]
dataloader.train.mapper.recompute_boxes = False
optimizer.lr = 1e-3
train.seed = 0  # detectron2 draws a random seed otherwise: a fit check must give the same number each run
train.max_iter = 200
train.eval_period = train.checkpointer.period = train.max_iter
train.output_dir = "output/vitdet_semaim_tiny_coco_fit"
