"""Fit checks: each downstream pipeline trains on a handful of images and is scored on the same
images. A working pipeline fits them; a broken one (wrong labels, weights that did not load, no
gradient reaching the model, a wrong loss) cannot. The thresholds sit well above what a model that
learned nothing scores (the majority-class baseline), with a random-init encoder, so they test the
pipeline and not the pretraining."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_classifier_fits_a_few_images(derived, demo_encoder, tmp_path):
    from cls.finetune import main

    result = main(["--data", str(derived / "crops"), "--encoder", str(demo_encoder[0]), "--output-dir", str(tmp_path),
                   "--img-size", "64", "--batch-size", "16", "--num-workers", "0", "--device", "cpu",
                   "--fit-images", "16",
                   "--epochs", "40", "--warmup-epochs", "2", "--blr", "5e-3", "--mixup", "0", "--cutmix", "0",
                   "--randaug", "", "--reprob", "0", "--smoothing", "0", "--drop-path", "0", "--layer-decay", "1.0",
                   "--dtype", "fp32"])
    assert result["majority_top1"] <= 25 and result["top1"] >= 75, result


@pytest.mark.slow(seconds=60)
def test_segmenter_fits_a_few_images(derived, demo_encoder, tmp_path):
    from seg.tools.train import main

    main([str(REPO / "seg/configs/upernet_semaim-vit-tiny_1xb4-fit_tiny-coco-stuff-128x128.py"), "--work-dir",
          str(tmp_path), "--cfg-options", f"model.backbone.checkpoint={demo_encoder[0]}",
          *[f"{s}_dataloader.dataset.data_root={derived / 'coco_stuff'}" for s in ("train", "val", "test")],
          *[f"{s}_dataloader.num_workers=0" for s in ("train", "val", "test")],
          *[f"{s}_dataloader.persistent_workers=False" for s in ("train", "val", "test")]])
    metrics = json.loads((tmp_path / "seg_metrics.json").read_text())
    # what always answering the most frequent class scores on the same 4 maps
    maps = sorted((derived / "coco_stuff/annotations/train2017").glob("*.png"))[:4]
    labels = np.concatenate([np.asarray(Image.open(f)).ravel() for f in maps])
    labels = labels[labels != 255]
    counts = np.bincount(labels)
    majority_acc = 100 * counts.max() / len(labels)
    majority_miou = majority_acc / np.count_nonzero(counts)
    scores = (metrics["aAcc"], metrics["mIoU"], majority_acc)
    assert metrics["aAcc"] >= majority_acc + 8 and metrics["mIoU"] >= 2 * majority_miou, scores


@pytest.mark.slow(seconds=270)
def test_detector_fits_a_few_images(demo_encoder, tmp_path):
    from det.train_net import main, parse_args

    main(parse_args(["--config", str(REPO / "det/configs/vitdet_semaim_tiny_coco_fit.py"),
                     f"train.output_dir={tmp_path}", f"train.init_checkpoint={demo_encoder[0]}",
                     "dataloader.train.num_workers=0", "dataloader.test.num_workers=0"]))
    metrics = json.loads((tmp_path / "det_metrics.json").read_text())
    assert metrics["dataset"] == "tiny_coco_fit" and metrics["provenance"]["images"] == 4
    assert metrics["bbox"]["AP50"] >= 10 and metrics["segm"]["AP"] >= 2, (metrics["bbox"], metrics["segm"]["AP"])
