"""Small pure functions the LazyConfigs call, so a recipe is written in epochs and fractions of
training, once, and a config that changes ``train.max_iter`` or the image size changes nothing else."""
from functools import partial

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data.detection_utils import get_fed_loss_cls_weights
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import CascadeROIHeads, FastRCNNConvFCHead, FastRCNNOutputLayers
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

COCO_TRAIN_IMAGES = 117_266  # coco_2017_train after detectron2 drops images without annotations
LVIS_TRAIN_IMAGES = 100_000  # lvis_v1_train, as ViTDet counts an epoch (156250 iterations x 64 = 100 epochs)
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


# what a Mask R-CNN box predictor sets that each Cascade stage keeps (LVIS: sigmoid + federated loss,
# 300 detections per image scored from 0.02; COCO: 100 from 0.05)
PREDICTOR_SETTINGS = ("test_score_thresh", "test_topk_per_image", "use_sigmoid_ce", "use_fed_loss",
                      "get_fed_loss_cls_weights")


def to_cascade(roi_heads, conv_dims=(256, 256, 256, 256), fc_dim: int = 1024) -> None:
    """Turn a Mask R-CNN ``roi_heads`` config into ViTDet's Cascade R-CNN heads, in place: three
    stages of a conv + LN box head, class-agnostic box regression, IoU thresholds 0.5 / 0.6 / 0.7
    and box weights (10, 5), (20, 10), (30, 15) (projects/ViTDet/configs/{COCO,LVIS}/
    cascade_mask_rcnn_vitdet_b_100ep.py). Each stage's predictor keeps what the Mask R-CNN predictor
    set (``PREDICTOR_SETTINGS``); the mask head and the sampling stay as they are."""
    channels = roi_heads.box_head.input_shape.channels
    kept = {k: roi_heads.box_predictor[k] for k in PREDICTOR_SETTINGS if k in roi_heads.box_predictor}
    kept.setdefault("test_score_thresh", 0.05)
    for key in ("box_head", "box_predictor", "proposal_matcher"):  # Mask R-CNN's single-stage arguments
        roi_heads.pop(key)
    roi_heads.update(
        _target_=CascadeROIHeads,
        box_heads=[L(FastRCNNConvFCHead)(input_shape=ShapeSpec(channels=channels, height=7, width=7),
                                         conv_dims=list(conv_dims), fc_dims=[fc_dim], conv_norm="LN")
                   for _ in range(3)],
        box_predictors=[L(FastRCNNOutputLayers)(input_shape=ShapeSpec(channels=fc_dim),
                                                box2box_transform=L(Box2BoxTransform)(weights=(w1, w1, w2, w2)),
                                                cls_agnostic_bbox_reg=True, num_classes="${...num_classes}", **kept)
                        for w1, w2 in ((10, 5), (20, 10), (30, 15))],
        proposal_matchers=[L(Matcher)(thresholds=[iou], labels=[0, 1], allow_low_quality_matches=False)
                           for iou in (0.5, 0.6, 0.7)],
    )


def to_vit_large(net, lr_factor_func) -> None:
    """ViTDet's ViT-L settings on a ViT-B backbone config, in place: width 1024, 24 blocks of 16
    heads, drop path 0.4, global attention in blocks 5, 11, 17 and 23 (window attention elsewhere),
    and layer decay 0.8 (projects/ViTDet/configs/{COCO,LVIS}/mask_rcnn_vitdet_l_100ep.py)."""
    net.update(embed_dim=1024, depth=24, num_heads=16, drop_path_rate=0.4,
               window_block_indexes=[i for i in range(24) if i % 6 != 5])
    lr_factor_func.lr_decay_rate = 0.8


def fed_loss_weights(dataset_names: str, freq_weight_power: float = 0.5):
    """The federated loss's class weights for ``dataset_names`` (LVIS's image counts per class), as
    the callable ``FastRCNNOutputLayers`` asks for."""
    return partial(get_fed_loss_cls_weights, dataset_names, freq_weight_power)
