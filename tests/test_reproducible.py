"""The fit checks give the same numbers on every run: the det and seg fit configs, shortened, run
twice as the demo runs them (two loader workers each, the same thread count) and agree exactly in
every logged loss, the final weights and the scored metrics."""
import json
from pathlib import Path

import pytest
import torch

from semaim_core.safe_io import load_file

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    different = [k for k in a if torch.is_tensor(a[k]) and not torch.equal(a[k], b[k])]
    assert not different, different[:5]


@pytest.mark.slow(seconds=40)
def test_detector_fit_check_twice(demo_encoder, tmp_path):
    from det.train_net import main, parse_args

    def run(out):
        main(parse_args(["--config", str(REPO / "det/configs/vitdet_semaim_tiny_coco_fit.py"),
                         f"train.output_dir={out}", f"train.init_checkpoint={demo_encoder[0]}",
                         "dataloader.train.num_workers=2", "dataloader.test.num_workers=2", "train.max_iter=3",
                         "train.eval_period=3", "train.checkpointer.period=3", "train.log_period=1"]))
        losses = [{k: v for k, v in json.loads(x).items() if "loss" in k or k in ("iteration", "lr")}
                  for x in (out / "metrics.json").read_text().splitlines()]
        metrics = json.loads((out / "det_metrics.json").read_text())
        return losses, {k: metrics[k] for k in ("bbox", "segm")}, load_file(out / "model_final.pth")["model"]

    (loss_a, metrics_a, weights_a), (loss_b, metrics_b, weights_b) = run(tmp_path / "a"), run(tmp_path / "b")
    assert len([x for x in loss_a if "total_loss" in x]) == 3
    assert loss_a == loss_b and metrics_a == metrics_b
    assert_same_weights(weights_a, weights_b)


@pytest.mark.slow(seconds=30)
def test_segmenter_fit_check_twice(derived, demo_encoder, tmp_path):
    from seg.tools.train import main

    def run(work):
        main([str(REPO / "seg/configs/upernet_semaim-vit-tiny_1xb4-fit_tiny-coco-stuff-128x128.py"), "--work-dir",
              str(work), "--cfg-options", f"model.backbone.checkpoint={demo_encoder[0]}",
              *[f"{s}_dataloader.dataset.data_root={derived / 'coco_stuff'}" for s in ("train", "val", "test")],
              *[f"{s}_dataloader.num_workers=2" for s in ("train", "val", "test")],
              "train_cfg.max_iters=3", "train_cfg.val_interval=3", "default_hooks.checkpoint.interval=3",
              "default_hooks.logger.interval=1"])
        scalars = [json.loads(x) for x in next(work.glob("*/vis_data/scalars.json")).read_text().splitlines()]
        losses = [{k: v for k, v in x.items() if "loss" in k or k in ("step", "lr")} for x in scalars if "loss" in x]
        metrics = json.loads((work / "seg_metrics.json").read_text())
        return losses, {k: metrics[k] for k in ("aAcc", "mIoU", "per_class")}, load_file(work / "iter_3.pth")

    (loss_a, metrics_a, ckpt_a), (loss_b, metrics_b, ckpt_b) = run(tmp_path / "a"), run(tmp_path / "b")
    assert len(loss_a) == 3
    assert loss_a == loss_b and metrics_a == metrics_b
    assert_same_weights(ckpt_a["state_dict"], ckpt_b["state_dict"])
