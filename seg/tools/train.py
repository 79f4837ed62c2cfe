#!/usr/bin/env python
"""Train a segmentor with a SemAIM backbone (mmengine Runner, as mmseg's tools/train.py).

    python -m seg.tools.train seg/configs/upernet_semaim.py --work-dir work_dirs/upernet_semaim_b \
        --cfg-options model.backbone.checkpoint=runs/semaim_b/encoder.pth
    torchrun --nproc_per_node 8 -m seg.tools.train seg/configs/upernet_semaim.py --launcher pytorch
"""
import os

from seg.engine import own_last_checkpoint
from seg.tools.common import STOPPING, build_runner, check_inputs, load_config, parser, recipe
from semaim_core.errors import command
from semaim_core.rundir import open_run, release_lock, with_input_digests


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
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))  # torchrun or srun (--launcher slurm)
    check_inputs(cfg)  # before the work dir is claimed
    if rank == 0:  # one run per work dir; a resume must keep the recipe
        open_run(cfg.work_dir, with_input_digests(recipe(cfg), ["model.backbone.checkpoint"]),
                 overwrite=args.overwrite, fresh=not args.resume, stopping=STOPPING)
    try:
        if rank == 0 and args.resume and not cfg.get("load_from"):
            own_last_checkpoint(cfg.work_dir)  # named now, before the runner starts its log folder
        build_runner(cfg).train()
    finally:
        if rank == 0:
            release_lock(cfg.work_dir)


if __name__ == "__main__":
    command(main)()
