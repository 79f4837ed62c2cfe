"""Seconds per training iteration and peak memory of the suite's UperNet config against mmseg's
stock MAE UperNet config: same data (the COCO-Stuff maps derived from tiny_coco), same steps,
in one run.

    python tools/benchmark_seg.py --batch 2 --iters 200
"""
import argparse
import copy
import json
import os

# isort: off
import seg  # noqa: F401  (first: the mmcv-lite compatibility layer, before mmseg imports mmcv.ops)
import mmseg
# isort: on
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.runner import Runner
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

from semaim_core.errors import HelpFormatter, command
from tools.lib.benchmark import spread, time_steps

STOCK = os.path.join(os.path.dirname(mmseg.__file__),
                     ".mim/configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py")


def loader(cfg, data_root: str, batch: int):
    """The config's own training pipeline over the derived COCO-Stuff maps."""
    dl = copy.deepcopy(cfg.train_dataloader)
    pipeline = [t for t in dl.dataset.pipeline if t["type"] != "LoadAnnotations"]
    pipeline.insert(1, dict(type="LoadAnnotations"))  # labels are train ids already: no zero-label shift
    dl.dataset = dict(type="COCOStuffDataset", data_root=data_root, pipeline=pipeline,
                      data_prefix=dict(img_path="images/train2017", seg_map_path="annotations/train2017"))
    dl.update(batch_size=batch, num_workers=4, persistent_workers=False)
    return Runner.build_dataloader(dl)


def measure(config: str, name: str, data_root: str, batch: int, iters: int, warmup: int, device: str) -> dict:
    torch.manual_seed(0)
    cfg = Config.fromfile(config)
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.pop("pretrained", None)
    model_cfg.backbone.pop("checkpoint", None)
    model = MODELS.build(model_cfg)
    model.init_weights()
    model = revert_sync_batchnorm(model).to(device)  # one process: BatchNorm instead of SyncBN, for both
    optim = copy.deepcopy(cfg.optim_wrapper)
    optim["type"] = "AmpOptimWrapper" if device.startswith("cuda") else "OptimWrapper"
    optim_wrapper = build_optim_wrapper(model, optim)
    batches = iter(loader(cfg, data_root, batch))
    model.train()

    def step():
        nonlocal batches
        try:
            data = next(batches)
        except StopIteration:
            batches = iter(loader(cfg, data_root, batch))
            data = next(batches)
        model.train_step(data, optim_wrapper)

    result = time_steps(step, iters, warmup, torch.device(device))
    return dict(model=name, s_per_iter=round(result["s_per_iter"], 4),
                **spread(result), peak_mem_gib=result["peak_mem_gib"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--config", default="seg/configs/upernet_semaim.py")
    ap.add_argument("--data-root", default="data/derived/coco_stuff")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    register_all_modules()
    rows = [measure(STOCK, "mmseg stock MAE UperNet", args.data_root, args.batch, args.iters, args.warmup, args.device),
            measure(args.config, "SemAIM config", args.data_root, args.batch, args.iters, args.warmup, args.device)]
    for r in rows:
        print(json.dumps(r))
    print(f"SemAIM / stock seconds per iteration: {rows[1]['s_per_iter'] / rows[0]['s_per_iter']:.3f} "
          f"(batch {args.batch}, {args.iters} iterations, {args.device})")


if __name__ == "__main__":
    command(main)()
