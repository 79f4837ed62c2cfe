#!/usr/bin/env python
"""Evaluate a trained segmentor: mIoU, mAcc, aAcc and per-class IoU to <work_dir>/seg_metrics.json.

    python seg/tools/test.py seg/configs/upernet_semaim.py work_dirs/upernet_semaim_b/iter_160000.pth
"""
import torch

from common import build_runner, load_config, parser

from semaim_core.checkpoint import CheckpointError, load_file, load_verified


def load_segmentor(model, path: str):
    """Every weight of the trained segmentor must load (mmengine's own loader is non-strict)."""
    ckpt = load_file(path)
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
    args = ap.parse_args(argv)
    cfg = load_config(args)
    cfg.model.backbone.checkpoint = None  # the segmentor checkpoint holds the backbone too
    cfg.load_from = None
    runner = build_runner(cfg, splits=("test",))
    load_segmentor(runner.model, args.checkpoint)
    with torch.no_grad():
        metrics = runner.test()
    print(f"{metrics} -> {cfg.work_dir}/seg_metrics.json")
    return metrics


if __name__ == "__main__":
    main()
