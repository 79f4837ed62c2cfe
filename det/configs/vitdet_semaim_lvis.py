# ViTDet Mask R-CNN, ViT-B/16 SemAIM backbone, LVIS v1: ViTDet's LVIS/mask_rcnn_vitdet_b_100ep.py
# on vitdet_semaim.py: repeat-factor sampling (threshold 0.001), 1203 classes with the sigmoid
# federated loss, 300 detections per image scored from 0.02, LVIS evaluation, 100 epochs of 100k
# images at batch 64, lr 2e-4 after a 250-iteration warm-up.
# Data: $DETECTRON2_DATASETS/lvis/lvis_v1_{train,val}.json with the COCO 2017 images in
# $DETECTRON2_DATASETS/coco/{train,val}2017 (detectron2's layout); scoring needs `pip install lvis`.
from detectron2.config import LazyCall as L
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.evaluation.lvis_evaluation import LVISEvaluator

from det.recipe import LVIS_TRAIN_IMAGES, epochs_to_iters, fed_loss_weights

from .vitdet_semaim import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader.train.dataset.names = "lvis_v1_train"
dataloader.train.sampler = L(RepeatFactorTrainingSampler)(
    repeat_factors=L(RepeatFactorTrainingSampler.repeat_factors_from_category_frequency)(
        dataset_dicts="${dataloader.train.dataset}", repeat_thresh=0.001))
dataloader.test.dataset.names = "lvis_v1_val"
dataloader.evaluator = L(LVISEvaluator)(dataset_name="${..test.dataset.names}", max_dets_per_image=300)

model.roi_heads.num_classes = 1203
# (no module-level alias of the predictor: LazyConfig would keep it as a top-level key of the config)
model.roi_heads.box_predictor.update(
    test_score_thresh=0.02, test_topk_per_image=300, use_sigmoid_ce=True, use_fed_loss=True,
    get_fed_loss_cls_weights=L(fed_loss_weights)(dataset_names="${dataloader.train.dataset.names}"))

train.max_iter = epochs_to_iters(100, dataloader.train.total_batch_size, images=LVIS_TRAIN_IMAGES)
train.eval_period = train.checkpointer.period = 30_000
lr_multiplier.warmup_iters = 250
optimizer.lr = 2e-4
train.output_dir = "output/vitdet_semaim_lvis_b"
