"""The frozen-feature linear depth protocol (seg/depth.py and the lineardepth configs): DINOv2's head
and loss, DINOv3's released NYU recipe, frozen means frozen, exact resume, the tables' columns.
The fit check (it learns depth on scenes of known depth) is in test_fit_checks.py."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmseg.registry import MODELS, TRANSFORMS
from mmseg.utils import register_all_modules

import seg  # noqa: F401
from semaim_core.layouts import mmseg_keys
from semaim_core.safe_io import load_file

DEPTH = "seg/configs/lineardepth_semaim-vit-b16_8xb2-38400iters_nyu-416x544.py"
DEPTH4 = "seg/configs/lineardepth4_semaim-vit-b16_8xb2-38400iters_nyu-416x544.py"
FIT = "seg/configs/lineardepth_semaim-vit-tiny_1xb4-fit_depth-scenes-128x160.py"
register_all_modules()

# DINOv2: paper section 7.4 (lin. 1) and dinov2/eval/depth (BNHead: [CLS] concatenated, upsample 4,
# 256 "UD" bins with "linear" normalization, no BatchNorm; get_intermediate_layers(norm=False); SigLoss);
# hub/depthers.py (0.001-10 m for NYU, lin. 4 blocks 2, 5, 8, 11). DINOv3's config-nyu.yaml and
# transforms.py: the optimization, the NYU crop, rotation, flip, crop 416 x 544, colour, TTA, Eigen crop.
RECIPE = {"model.type": "DepthEstimator", "model.backbone.out_indices": [11], "model.backbone.final_norm": False,
          "model.backbone.frozen": True, "model.backbone.cls_token_outputs": True,
          "model.backbone.drop_path_rate": 0.0, "model.decode_head.type": "LinearDepthHead",
          "model.decode_head.cls_token": True, "model.decode_head.upsample": 4,
          "model.decode_head.batchnorm": False, "model.decode_head.num_classes": 256,
          "model.decode_head.min_depth": 1e-3, "model.decode_head.max_depth": 10.0,
          "model.decode_head.dropout_ratio": 0.0, "model.decode_head.channels": 1536,
          "model.decode_head.loss_decode.type": "SigLoss", "model.decode_head.loss_decode.warm_iter": 100,
          "model.decode_head.loss_decode.loss_weight": 1.0, "model.test_cfg.mode": "slide_flip",
          "model.test_cfg.crop_size": (480, 640),
          "optim_wrapper.type": "OptimWrapper", "optim_wrapper.optimizer.type": "AdamW",
          "optim_wrapper.optimizer.lr": 3e-4, "optim_wrapper.optimizer.betas": (0.9, 0.99),
          "optim_wrapper.optimizer.weight_decay": 1e-4, "optim_wrapper.clip_grad.max_norm": 35,
          "train_cfg.max_iters": 38400, "train_dataloader.batch_size": 2,
          "param_scheduler.0.warmup": 12800, "param_scheduler.0.final_div_factor": 1000.0,
          "param_scheduler.1.base": 0.85, "param_scheduler.1.peak": 0.95,
          "train_dataloader.dataset.type": "NYUDataset",
          "train_dataloader.dataset.pipeline.1.depth_rescale_factor": 1e-3,
          "train_dataloader.dataset.pipeline.2.box": (43, 45, 608, 472),
          "train_dataloader.dataset.pipeline.3.type": "RandomRotate",
          "train_dataloader.dataset.pipeline.3.degree": 2.5, "train_dataloader.dataset.pipeline.3.prob": 0.5,
          "train_dataloader.dataset.pipeline.3.seg_pad_val": 0, "train_dataloader.dataset.pipeline.4.prob": 0.5,
          "train_dataloader.dataset.pipeline.5.crop_size": (416, 544),
          "train_dataloader.dataset.pipeline.6.brightness_range": (0.75, 1.25),
          "train_dataloader.dataset.pipeline.6.prob": 0.5,
          "val_evaluator.crop_type": "nyu_crop", "val_evaluator.min_depth_eval": 1e-3,
          "val_evaluator.max_depth_eval": 10.0}


@pytest.mark.parametrize("key, value", RECIPE.items(), ids=list(RECIPE))
def test_the_depth_config_holds_its_sources_recipe(key, value):
    node = Config.fromfile(DEPTH)
    for part in key.split("."):
        node = node[int(part)] if part.isdigit() else node[part]
    assert node == value


def test_lin4_reads_dinov2s_four_blocks():
    cfg = Config.fromfile(DEPTH4)
    assert cfg.model.backbone.out_indices == [2, 5, 8, 11] and cfg.model.decode_head.channels == 4 * 2 * 768


def dinov3_schedule(step, peak=3e-4, total=38400, warmup=12800, final_div=1000.0):
    """(lr, beta1) of dinov3/eval/depth/schedulers.py WarmupOneCycleLR at ``step`` (warmup_ratio 0,
    pct_start unused once warmup_iters is set, div_factor 25, cosine, use_beta1)."""
    def anneal(start, end, pct):
        return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)

    if step < warmup:
        return peak / final_div + peak * (1 + math.cos(math.pi * step / total)) / 2 * step / warmup, 0.0
    return (anneal(peak, peak / 25 / final_div, (step + 1) / total),
            anneal(0.85, 0.95, (step - warmup) / (total - warmup)))


def test_the_schedule_is_dinov3s_lr_and_beta1():
    """The config's two schedulers, stepped as mmengine steps them over all 38400 iterations,
    against DINOv3's formula: the lr within 1e-12 of the peak, beta1 exactly where it is 0."""
    from mmengine.optim import OptimWrapper
    from mmengine.registry import PARAM_SCHEDULERS

    cfg = Config.fromfile(DEPTH)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-4, betas=(0.9, 0.99))
    wrapper = OptimWrapper(optimizer)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=wrapper)) for s in cfg.param_scheduler]
    worst_lr = worst_beta = 0.0
    for step in range(38400):
        lr, beta1 = dinov3_schedule(step)
        group = optimizer.param_groups[0]
        worst_lr = max(worst_lr, abs(group["lr"] - lr) / 3e-4)
        worst_beta = max(worst_beta, abs(group["betas"][0] - beta1))
        assert group["betas"][1] == 0.99
        wrapper.step()
        for s in schedulers:
            s.step()
    assert worst_lr < 1e-12 and worst_beta < 1e-12, (worst_lr, worst_beta)


def tiny_model(config=DEPTH, **backbone):
    cfg = Config.fromfile(config)
    cfg.model.backbone.update(checkpoint=None, img_size=(32, 48), num_layers=3, embed_dims=24, num_heads=2,
                              out_indices=[2], **backbone)
    cfg.model.decode_head.update(in_channels=[24], channels=48)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def test_the_head_is_dinov2s_bnhead_on_cls_and_patch_tokens():
    """Patch tokens with the [CLS] token concatenated, upsampled x 4, a 1 x 1 conv to 256 bins,
    ReLU + 0.1 normalized to weights of the bins' depths (dinov2 decode_head.depth_pred); the
    tokens are the last block's without the final norm. The frozen backbone takes no gradient,
    stays in eval mode when the model trains, and runs at another size than it was built for."""
    model = tiny_model()
    model.train()
    backbone, head = model.backbone, model.decode_head
    assert not backbone.training and not any(p.requires_grad for p in backbone.parameters())
    assert head.out_channels == 1 and backbone.layers[0].attn.relative_position_bias_table is None
    images = torch.randn(2, 3, 32, 48)
    ((patches, cls),) = backbone(images)
    assert patches.shape == (2, 24, 2, 3) and cls.shape == (2, 24) and not patches.requires_grad
    with torch.no_grad():  # the tokens by hand, through mmseg's own blocks
        x, _ = backbone.patch_embed(images)
        x = torch.cat([backbone.cls_token.expand(2, -1, -1), x], dim=1) + backbone.pos_embed
        for layer in backbone.layers:
            x = layer(x)
        torch.testing.assert_close(cls, x[:, 0])
        torch.testing.assert_close(patches, x[:, 1:].reshape(2, 2, 3, 24).permute(0, 3, 1, 2))
        features = torch.cat([patches, cls[:, :, None, None].expand(-1, -1, 2, 3)], dim=1)
        features = F.interpolate(features, size=(8, 12), mode="bilinear", align_corners=False)
        weights = torch.relu(head.conv_seg(features)) + 0.1
        weights = weights / weights.sum(dim=1, keepdim=True)
        expected = (weights * torch.linspace(1e-3, 10.0, 256)[None, :, None, None]).sum(dim=1, keepdim=True)
        torch.testing.assert_close(head([(patches, cls)]), expected)
        ((bigger, _),) = backbone(torch.randn(1, 3, 64, 80))  # the whole-image test: a 4 x 5 grid
    assert bigger.shape == (1, 24, 4, 5)
    with pytest.raises(ValueError, match="relative-position tables fit one grid"):
        tiny_model(rel_pos_bias=True).backbone(torch.randn(1, 3, 64, 80))
    with pytest.raises(ValueError, match="set the backbone's cls_token_outputs=True"):
        head([patches])


def test_sigloss_is_dinov2s_and_counts_its_warm_up_in_the_checkpoint():
    """sqrt(Var(g) + 0.15 mean(g)^2) over the pixels with depth, g the log ratio (+1e-3 each), the
    variance left out for warm_iter calls; the count is part of the state dict (a resume continues it)."""
    loss = MODELS.build(dict(type="SigLoss", warm_iter=2))
    pred, gt = torch.rand(2, 1, 5, 6) * 9 + 0.5, torch.rand(2, 1, 5, 6) * 9 + 0.5
    gt[0, 0, 0] = 0  # no depth: left out
    g = torch.log(pred[gt > 0] + 1e-3) - torch.log(gt[gt > 0] + 1e-3)
    for _ in range(2):
        torch.testing.assert_close(loss(pred, gt), torch.sqrt(0.15 * g.mean() ** 2))
    torch.testing.assert_close(loss(pred, gt), torch.sqrt(g.var() + 0.15 * g.mean() ** 2))
    assert loss.state_dict()["steps"] == 2
    resumed = MODELS.build(dict(type="SigLoss", warm_iter=2))
    resumed.load_state_dict(loss.state_dict())
    torch.testing.assert_close(resumed(pred, gt), loss(pred, gt))


def test_the_nyu_transforms_are_the_depth_pipelines():
    """NYUCrop's box from image and depth alike (a smaller image is named); ColorAug's gamma,
    brightness and per-channel factors, drawn in that order, on the 0-255 image, clipped."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3)).astype(np.uint8)
    depth = rng.random((480, 640)).astype(np.float32)
    crop = TRANSFORMS.build(dict(type="DepthFixedCrop"))
    out = crop.transform(dict(img=image, gt_depth_map=depth, seg_fields=["gt_depth_map"]))
    assert out["img"].shape == (427, 565, 3) and out["img_shape"] == (427, 565)
    assert np.array_equal(out["gt_depth_map"], depth[45:472, 43:608])
    with pytest.raises(ValueError, match="does not fit the 320 x 240 image"):
        crop.transform(dict(img=image[:240, :320], seg_fields=[]))
    color = TRANSFORMS.build(dict(type="DepthColorAug", prob=1.0, brightness_range=(0.75, 1.25)))
    np.random.seed(3)
    got = color.transform(dict(img=image.copy()))["img"]
    np.random.seed(3)
    np.random.rand()  # the draw that decides whether to apply it
    gamma, brightness = np.random.uniform(0.9, 1.1), np.random.uniform(0.75, 1.25)
    colors = np.random.uniform(0.9, 1.1, size=3)
    assert np.allclose(got, np.clip(image.astype(np.float32) ** gamma * brightness * colors, 0, 255))


def test_a_missing_nyu_folder_names_its_layout(tmp_path):
    from seg.tools.train import main
    from semaim_core.errors import UserError

    with pytest.raises(UserError, match=r"data/nyu/\{images,annotations\}/\{train,test\}.*millimetres"):
        main([DEPTH, "--work-dir", str(tmp_path / "w"), "--cfg-options", "model.backbone.checkpoint=None",
              "train_dataloader.dataset.data_root=/nonexistent/nyu"])
    assert not (tmp_path / "w").exists()


@pytest.mark.slow(seconds=40)
def test_the_probe_trains_its_head_alone_resumes_exactly_and_fills_the_depth_columns(demo_encoder, derived,
                                                                                     tmp_path):
    """8 iterations straight, and 4 then resumed to 8 (the SigLoss warm-up count and beta1's
    schedule cross iteration 5 in between): the same weights bit for bit; the encoder's tensors are
    the loaded ones; depth_metrics.json names the protocol, and the tables show RMSE, AbsRel and
    delta1 of the linear head beside DINOv2's and DINOv3's published NYU RMSE."""
    from seg.tools.train import main
    from tools.lib.results import collect, columns, published_rows, table

    path, encoder = demo_encoder
    scenes = derived / "depth_scenes"
    opts = [f"model.backbone.checkpoint={path}", "default_hooks.checkpoint.interval=4", "train_cfg.val_interval=8",
            *[f"{s}_dataloader.dataset.data_root={scenes}" for s in ("train", "val", "test")]]
    straight, work = tmp_path / "straight", tmp_path / "work"
    main([FIT, "--work-dir", str(straight), "--cfg-options", "train_cfg.max_iters=8", *opts])
    main([FIT, "--work-dir", str(work), "--cfg-options", "train_cfg.max_iters=4", *opts])
    main([FIT, "--work-dir", str(work), "--resume", "--cfg-options", "train_cfg.max_iters=8", *opts])
    after, expected = load_file(work / "iter_8.pth")["state_dict"], load_file(straight / "iter_8.pth")["state_dict"]
    assert after.keys() == expected.keys() and all(torch.equal(v, expected[k]) for k, v in after.items())
    assert after["decode_head.loss_decode.steps"] == 5  # warm_iter 5: counted to it, then the variance term
    loaded = mmseg_keys(encoder)
    backbone = {k.removeprefix("backbone."): v for k, v in after.items() if k.startswith("backbone.")}
    assert all(torch.equal(backbone[k], loaded[k]) for k in loaded if k in backbone and k != "pos_embed")
    assert set(loaded) - set(backbone) == {"ln1.weight", "ln1.bias"}  # all but the final norm, which lin. 1 skips

    result = json.loads((work / "depth_metrics.json").read_text())
    assert (result["task"], result["protocol"], result["blocks"], result["provenance"]["iteration"]) == (
        "depth", "linear", [3], 8)
    assert 0 < result["rmse"] < 10 and 0 <= result["d1"] <= 100
    rows = collect([("probe", [str(work)])])
    assert not rows[0].problems, rows[0].problems
    assert [label for _, label in columns(rows)] == [
        "RMSE m (linear, blocks 3) [NYU]", "AbsRel (linear, blocks 3) [NYU]", "δ1 % (linear, blocks 3) [NYU]"]
    text = table(rows + published_rows())
    assert f"| {result['rmse']:.3f} |" in text and "| 0.362 |" in text and "| 0.373 |" in text
