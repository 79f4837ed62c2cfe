"""Small pure functions the LazyConfigs call, so a recipe is written in epochs and fractions of
training, once, and a config that changes ``train.max_iter`` or the image size changes nothing else."""
from functools import partial

import detectron2.data.transforms as T
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

COCO_TRAIN_IMAGES = 117_266  # coco_2017_train after detectron2 drops images without annotations
VITDET_MILESTONES = (0.889, 0.963)  # ViTDet's 100-epoch schedule: lr x0.1 at epochs 88.9 and 96.3


def epochs_to_iters(epochs: float, batch_size: int, images: int = COCO_TRAIN_IMAGES) -> int:
    return max(1, round(epochs * images / batch_size))


def vit_lr_decay(num_layers: int, lr_decay_rate: float):
    """detectron2's ``get_vit_lr_decay_rate`` bound to the backbone's depth (a LazyCall target,
    so the depth is read from ``model.backbone.net.depth`` instead of being typed twice)."""
    return partial(get_vit_lr_decay_rate, num_layers=num_layers, lr_decay_rate=lr_decay_rate)


def vitdet_lr_schedule(max_iter: int, warmup_iters: int, milestones=VITDET_MILESTONES, factors=(1.0, 0.1, 0.01),
                       warmup_factor: float = 0.001) -> WarmupParamScheduler:
    """ViTDet's step schedule for ``max_iter`` iterations: the lr times ``factors`` after each
    fraction of training in ``milestones``, after a linear warm-up of ``warmup_iters``."""
    # a smoke run of a few iterations keeps the milestones that fit strictly inside it
    at = sorted({round(max_iter * f) for f in milestones} & set(range(1, max_iter)))
    steps = MultiStepParamScheduler(values=list(factors[:len(at) + 1]), milestones=at, num_updates=max_iter)
    return WarmupParamScheduler(steps, warmup_length=min(warmup_iters / max_iter, 1.0), warmup_factor=warmup_factor)


def lsj_augmentations(image_size: int) -> list:
    """ViTDet's large-scale jitter at ``image_size``: flip, rescale by 0.1-2.0, crop a square."""
    return [T.RandomFlip(horizontal=True),
            T.ResizeScale(min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size),
            T.FixedSizeCrop(crop_size=(image_size, image_size), pad=False)]
