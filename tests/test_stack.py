"""The installed stack works end to end on the CPU, on real bundled images:
detectron2's ViTDet Mask R-CNN, mmseg's UperNet on the MAE backbone with layer decay, timm's ViT."""
import contextlib
import io

import pytest
import torch

SIZE = 256


# ---------------------------------------------------------------- detectron2 / ViTDet
def shrunk_vitdet_model():
    """detectron2's model-zoo ViTDet Mask R-CNN, shrunk (a 4-block 192-dim ViT, 64-channel heads,
    256 px) by det/configs/vitdet_semaim_tiny_coco.py, which inherits it from the model zoo."""
    from detectron2.config import LazyConfig

    model = LazyConfig.load("det/configs/vitdet_semaim_tiny_coco.py").model
    assert model.backbone.net._target_.__name__ == "ViT" and model.backbone.net.img_size == SIZE
    return model


def tiny_coco_batch(tiny_coco, n=2):
    from detectron2.data import DatasetMapper
    from detectron2.data import transforms as T
    from detectron2.data.datasets import load_coco_json

    with contextlib.redirect_stdout(io.StringIO()):
        dicts = load_coco_json(str(tiny_coco / "annotations/instances_val2017.json"), str(tiny_coco / "val2017"))
    mapper = DatasetMapper(is_train=True, augmentations=[T.ResizeShortestEdge(SIZE, max_size=SIZE)],
                           image_format="RGB", use_instance_mask=True, recompute_boxes=True)
    return [mapper(d) for d in dicts if d["annotations"]][:n]


def test_detectron2_vitdet_mask_rcnn_trains_and_infers(tiny_coco):
    from detectron2.config import instantiate
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    model = instantiate(shrunk_vitdet_model())
    batch = tiny_coco_batch(tiny_coco)
    assert all(len(b["instances"]) > 0 and b["instances"].has("gt_masks") for b in batch)

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    with EventStorage():  # detectron2 logs training statistics into the current storage
        losses = model(batch)
    assert {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    before = model.backbone.net.blocks[0].attn.qkv.weight.detach().clone()
    total.backward()
    opt.step()
    assert not torch.equal(before, model.backbone.net.blocks[0].attn.qkv.weight)

    model.eval()
    with torch.no_grad():
        out = model([{"image": b["image"], "height": 480, "width": 640} for b in batch])
    inst = out[0]["instances"]
    assert inst.image_size == (480, 640)
    assert {"pred_boxes", "scores", "pred_classes", "pred_masks"} <= set(inst.get_fields())


# ---------------------------------------------------------------- mmseg / UperNet
def mmseg_cfg(num_classes=80, depth=4, dim=192):
    norm = dict(type="BN", requires_grad=True)
    model = dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                               bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=(SIZE, SIZE)),
        backbone=dict(type="MAE", img_size=(SIZE, SIZE), patch_size=16, embed_dims=dim, num_layers=depth, num_heads=3,
                      mlp_ratio=4, init_values=1.0, drop_path_rate=0.1, out_indices=[0, 1, 2, 3]),
        neck=dict(type="Feature2Pyramid", embed_dim=dim, rescales=[4, 2, 1, 0.5], norm_cfg=norm),
        decode_head=dict(type="UPerHead", in_channels=[dim] * 4, in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6),
                         channels=64, dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm, align_corners=False,
                         loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
        auxiliary_head=dict(type="FCNHead", in_channels=dim, in_index=2, channels=64, num_convs=1, concat_input=False,
                            dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm, align_corners=False,
                            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4)),
        train_cfg=dict(), test_cfg=dict(mode="whole"))
    optim = dict(type="OptimWrapper", constructor="LayerDecayOptimizerConstructor",
                 optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
                 paramwise_cfg=dict(num_layers=depth, layer_decay_rate=0.65))
    return model, optim


def test_mmseg_upernet_mae_layer_decay_train_and_test(derived):
    import seg  # noqa: F401  (mmcv-lite compatibility)
    from mmengine.config import ConfigDict
    from mmengine.dataset import pseudo_collate
    from mmengine.optim import build_optim_wrapper
    from mmseg.datasets import COCOStuffDataset
    from mmseg.evaluation import IoUMetric
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    torch.manual_seed(0)
    model_cfg, optim_cfg = mmseg_cfg()
    model = MODELS.build(ConfigDict(model_cfg))
    model.init_weights()
    optim_wrapper = build_optim_wrapper(model, optim_cfg)

    # layer decay really reached the blocks: block i gets 0.65^(depth - i), embeddings 0.65^(depth + 1)
    depth = 4
    scales = {}
    for g in optim_wrapper.optimizer.param_groups:
        for p in g["params"]:
            scales[id(p)] = g["lr_scale"]
    named = dict(model.named_parameters())
    assert scales[id(named["backbone.pos_embed"])] == pytest.approx(0.65 ** (depth + 1))
    for i in range(depth):
        assert scales[id(named[f"backbone.layers.{i}.attn.qkv.weight"])] == pytest.approx(0.65 ** (depth - i))
    assert scales[id(named["decode_head.conv_seg.weight"])] == pytest.approx(1.0)

    def dataset(*transforms):
        return COCOStuffDataset(data_root=str(derived / "coco_stuff"), pipeline=[dict(type="LoadImageFromFile"), *transforms],
                                data_prefix=dict(img_path="images/val2017", seg_map_path="annotations/val2017"))

    resize = dict(type="Resize", scale=(SIZE, SIZE), keep_ratio=False)
    # mmseg's usual pipelines: train labels are resized with the image, test labels stay at full size
    train_ds = dataset(dict(type="LoadAnnotations"), resize, dict(type="PackSegInputs"))
    test_ds = dataset(resize, dict(type="LoadAnnotations"), dict(type="PackSegInputs"))
    assert len(train_ds) == len(test_ds) == 50
    data = pseudo_collate([train_ds[i] for i in range(2)])

    log_vars = model.train_step(data, optim_wrapper)
    assert {"decode.loss_ce", "aux.loss_ce", "loss"} <= set(log_vars)
    assert torch.isfinite(log_vars["loss"])

    model.eval()
    data = pseudo_collate([test_ds[i] for i in range(2)])
    with torch.no_grad():
        results = model.test_step(data)
    for r in results:  # predictions come back at the original image size
        assert r.pred_sem_seg.data.shape[-2:] == r.gt_sem_seg.data.shape[-2:] == tuple(r.ori_shape)
    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = test_ds.metainfo
    metric.process(data, [r.to_dict() for r in results])
    scores = metric.compute_metrics(metric.results)
    assert 0.0 <= scores["aAcc"] <= 100.0


# ---------------------------------------------------------------- timm
def test_timm_builds_a_vit():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10)
    assert model(torch.randn(2, 3, 224, 224)).shape == (2, 10)
