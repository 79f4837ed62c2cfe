"""Small pure functions the LazyConfigs call, so recipes are written in epochs, not magic numbers."""
from functools import partial

from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

COCO_TRAIN_IMAGES = 117_266  # coco_2017_train after detectron2 drops images without annotations


def epochs_to_iters(epochs: float, batch_size: int, images: int = COCO_TRAIN_IMAGES) -> int:
    return max(1, round(epochs * images / batch_size))


def vit_lr_decay(num_layers: int, lr_decay_rate: float):
    """detectron2's ``get_vit_lr_decay_rate`` bound to the backbone's depth (a LazyCall target,
    so the depth is read from ``model.backbone.net.depth`` instead of being typed twice)."""
    return partial(get_vit_lr_decay_rate, num_layers=num_layers, lr_decay_rate=lr_decay_rate)
