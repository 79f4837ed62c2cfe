#!/usr/bin/env python
"""Train a segmentor with a SemAIM backbone (mmengine Runner, as mmseg's tools/train.py).

    python seg/tools/train.py seg/configs/upernet_semaim.py --work-dir work_dirs/upernet_semaim_b \
        --cfg-options model.backbone.checkpoint=runs/semaim_b/encoder.pth
    torchrun --nproc_per_node 8 seg/tools/train.py seg/configs/upernet_semaim.py --launcher pytorch
"""
from common import build_runner, load_config, parser


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--resume", action="store_true", help="resume from the last checkpoint in the work dir")
    ap.add_argument("--amp", action="store_true", help="mixed precision (AmpOptimWrapper)")
    args = ap.parse_args(argv)
    cfg = load_config(args)
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    cfg.resume = args.resume
    runner = build_runner(cfg)
    runner.train()


if __name__ == "__main__":
    main()
