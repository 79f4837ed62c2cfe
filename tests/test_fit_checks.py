"""Fit checks: each downstream pipeline trains on a handful of images and is scored on the same
images. A working pipeline fits them; a broken one (wrong labels, weights that did not load, no
gradient reaching the model, a wrong loss) cannot. The thresholds sit well above what a model that
learned nothing scores (the majority-class baseline), with a random-init encoder, so they test the
pipeline and not the pretraining. The marks live in tools/lib/fit_checks.py, which the demo's
evidence uses too."""
import json
from pathlib import Path

import pytest

from tools.lib.fit_checks import cls_failure, depth_constant, depth_failure, det_failure, seg_failure, seg_majority

REPO = Path(__file__).resolve().parents[1]


def test_the_demo_fails_on_a_fit_check_below_its_mark(tmp_path, capsys):
    """What the demo's last stage does with fit checks: evidence when they pass, a failure when not."""
    from tools.learning_evidence import main

    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "metrics.jsonl").write_text('{"loss": 1.2}\n{"loss": 1.0}\n')
    for name in ("cls_ft", "cls_lin", "cls_attn", "cls_knn", "fit_cls"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "cls_metrics.json").write_text(json.dumps(dict(top1=80.0, majority_top1=12.5)))
    (tmp_path / "fit_det").mkdir()
    det = dict(bbox=dict(AP50=18.0), segm=dict(AP=3.2))  # the old recipe's run on one thread: below the marks
    (tmp_path / "fit_det" / "det_metrics.json").write_text(json.dumps(det))
    assert main([str(tmp_path), "--data", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "box AP50 18.0, mask AP 3.2  FAILED: box AP50 18.0 < 30" in out.out
    assert "warning: fit check failed: Mask R-CNN on 4 train images, scored on them: box AP50 18.0 < 30" in out.err
    cls_line = next(line for line in out.out.splitlines() if "16 train crops" in line)
    assert cls_line.endswith("top-1 80.0; always the most frequent class: 12.5")  # passes: no FAILED
    record = json.loads((tmp_path / "evidence.json").read_text())
    assert record["fit_checks"]["det"] == det and len(record["problems"]) == 1

    det["bbox"]["AP50"], det["segm"]["AP"] = 64.5, 27.8
    (tmp_path / "fit_det" / "det_metrics.json").write_text(json.dumps(det))
    assert main([str(tmp_path), "--data", str(tmp_path)]) == 0


@pytest.mark.slow
def test_classifier_fits_a_few_images(derived, demo_encoder, tmp_path):
    from cls.finetune import main

    result = main(["--data", str(derived / "crops"), "--encoder", str(demo_encoder[0]), "--output-dir", str(tmp_path),
                   "--img-size", "64", "--batch-size", "16", "--num-workers", "0", "--device", "cpu",
                   "--fit-images", "16", "--save-every", "100",
                   "--epochs", "100", "--warmup-epochs", "2", "--blr", "1e-2", "--mixup", "0", "--cutmix", "0",
                   "--randaug", "", "--reprob", "0", "--smoothing", "0", "--drop-path", "0", "--layer-decay", "1.0",
                   "--dtype", "fp32"])
    assert cls_failure(result) is None, result


@pytest.mark.slow
def test_attentive_probe_fits_a_few_images(derived, demo_encoder, tmp_path):
    """Only the head trains, on frozen features: 16 crops are fitted when the query, k/v and the
    classifier all learn from the right labels. (lr 0.5 at batch 1024 is 7.8e-3 at this batch of 16.)"""
    from cls.attnprobe import main

    result = main(["--data", str(derived / "crops"), "--encoder", str(demo_encoder[0]), "--output-dir", str(tmp_path),
                   "--img-size", "64", "--batch-size", "16", "--num-workers", "0", "--device", "cpu",
                   "--fit-images", "16", "--save-every", "100", "--probe-layers", "last2",
                   "--epochs", "60", "--warmup-epochs", "2", "--lr-grid", "0.5", "--mixup", "0", "--cutmix", "0",
                   "--randaug", "", "--color-jitter", "0", "--smoothing", "0", "--dtype", "fp32"])
    assert cls_failure(result) is None, result


@pytest.mark.slow(seconds=60)
def test_segmenter_fits_a_few_images(derived, demo_encoder, tmp_path):
    from seg.tools.train import main

    main([str(REPO / "seg/configs/upernet_semaim-vit-tiny_1xb4-fit_tiny-coco-stuff-128x128.py"), "--work-dir",
          str(tmp_path), "--cfg-options", f"model.backbone.checkpoint={demo_encoder[0]}",
          *[f"{s}_dataloader.dataset.data_root={derived / 'coco_stuff'}" for s in ("train", "val", "test")],
          *[f"{s}_dataloader.num_workers=0" for s in ("train", "val", "test")],
          *[f"{s}_dataloader.persistent_workers=False" for s in ("train", "val", "test")]])
    metrics = json.loads((tmp_path / "seg_metrics.json").read_text())
    majority = seg_majority(derived / "coco_stuff/annotations/train2017")  # on the same 4 maps
    assert seg_failure(metrics, majority) is None, (metrics["aAcc"], metrics["mIoU"], majority)


@pytest.mark.slow(seconds=30)
def test_linear_depth_head_fits_a_few_scenes(derived, demo_encoder, tmp_path):
    """The frozen-feature depth protocol on 4 scenes of known depth (tools/lib/depth_scenes.py),
    scored on them at full size: its RMSE is under half the best constant prediction's."""
    from seg.tools.train import main

    scenes = derived / "depth_scenes"
    main([str(REPO / "seg/configs/lineardepth_semaim-vit-tiny_1xb4-fit_depth-scenes-128x160.py"), "--work-dir",
          str(tmp_path), "--cfg-options", f"model.backbone.checkpoint={demo_encoder[0]}",
          *[f"{s}_dataloader.dataset.data_root={scenes}" for s in ("train", "val", "test")]])
    metrics = json.loads((tmp_path / "depth_metrics.json").read_text())
    constant = depth_constant(scenes / "annotations/train")  # on the same 4 scenes
    assert depth_failure(metrics, constant) is None, (metrics["rmse"], metrics["d1"], constant)


@pytest.mark.slow(seconds=270)
def test_detector_fits_a_few_images(demo_encoder, tmp_path):
    from det.train_net import main, parse_args

    main(parse_args(["--config", str(REPO / "det/configs/vitdet_semaim_tiny_coco_fit.py"),
                     f"train.output_dir={tmp_path}", f"train.init_checkpoint={demo_encoder[0]}",
                     "dataloader.train.num_workers=0", "dataloader.test.num_workers=0"]))
    metrics = json.loads((tmp_path / "det_metrics.json").read_text())
    assert metrics["dataset"] == "tiny_coco_fit" and metrics["provenance"]["images"] == 4
    assert det_failure(metrics) is None, (metrics["bbox"], metrics["segm"]["AP"])
