#!/usr/bin/env python
"""Evaluate a trained segmentor: mIoU, mAcc, aAcc and per-class IoU to <work_dir>/seg_metrics.json
(a depth estimator: RMSE, AbsRel, delta1 and the other errors to <work_dir>/depth_metrics.json).

    python -m seg.tools.test seg/configs/upernet_semaim.py work_dirs/upernet_semaim_b/iter_160000.pth
    python -m seg.tools.test upernet_semaim.py CKPT --tta --out preds/ --show-dir vis/

--tta: multi-scale + flip (the config's tta_pipeline and tta_model, as mmseg's tools/test.py);
--out: the predicted label maps as PNGs (depth: 16-bit PNGs in millimetres); --show-dir: coloured
predictions beside the images.
"""
import os

import torch

from seg.engine import read_checkpoint
from seg.tools.common import backbone_cfg, build_runner, load_config, parser
from semaim_core.errors import SettingError, command
from semaim_core.provenance import check_replaceable, result_source
from semaim_core.safe_io import CheckpointError
from semaim_core.weights import load_verified


def load_segmentor(model, path: str):
    """Every weight of the trained segmentor must load (mmengine's own loader is non-strict)."""
    ckpt = read_checkpoint(path)
    if ckpt.get("format") in ("semaim-encoder", "semaim-train"):
        raise CheckpointError(f"{path} is a pretrained encoder, not a trained segmentor: pass the iter_*.pth "
                              "that seg/tools/train.py wrote")
    if not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path} has no 'state_dict': not an mmengine checkpoint of a segmentor")
    model = model.module if hasattr(model, "module") else model
    return load_verified(model, ckpt["state_dict"], f"segmentor <- {path}")


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("checkpoint", help="a checkpoint written by seg/tools/train.py")
    ap.add_argument("--tta", action="store_true", help="multi-scale + flip test (the config's tta_pipeline)")
    ap.add_argument("--out", help="save the predicted label maps (PNG, class index per pixel) in this folder")
    ap.add_argument("--show-dir", help="save coloured predictions drawn over the images in this folder")
    args = ap.parse_args(argv)
    cfg = load_config(args)
    json_file = cfg.get("test_evaluator", {}).get("json_file")
    # refused now, not after the evaluation; a missing checkpoint is left for the loader to name
    if json_file and os.path.isfile(args.checkpoint):
        check_replaceable(json_file, result_source(args.checkpoint), args.overwrite)
    if args.tta:
        if "tta_pipeline" not in cfg or "tta_model" not in cfg:
            raise SettingError(f"--tta: {args.config} defines no tta_pipeline / tta_model")
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.out:
        cfg.test_evaluator.update(output_dir=args.out, keep_results=True)
    if args.show_dir:
        cfg.default_hooks.visualization.update(draw=True, interval=1)
        cfg.visualizer.save_dir = args.show_dir
    backbone_cfg(cfg).checkpoint = None  # the segmentor checkpoint holds it
    cfg.load_from = None
    runner = build_runner(cfg, splits=("test",))
    load_segmentor(runner.model, args.checkpoint)
    with torch.no_grad():
        metrics = runner.test()
    print(f"{metrics} -> {json_file}")
    return metrics


if __name__ == "__main__":
    command(main)()
