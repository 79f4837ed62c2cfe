"""Seconds per training iteration and peak memory of the suite's ViTDet config against
detectron2's stock ViTDet MAE model definition: same data (tiny_coco, LSJ), same optimizer,
same steps, in one run.

    python tools/benchmark_det.py --config det/configs/vitdet_semaim.py --batch 4 --iters 200
"""
import argparse
import json

import torch
from detectron2 import model_zoo
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils.events import EventStorage

from det.checkpoint import load_backbone
from det.data import register_tiny_coco
from semaim_core import build_model
from semaim_core.errors import HelpFormatter, command
from semaim_core.export import export_encoder
from semaim_core.safe_io import save_atomic
from tools.lib.benchmark import spread, time_steps


def measure(cfg, stock: bool, encoder: str, iters: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model_cfg = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model if stock else cfg.model
    model = instantiate(model_cfg).to(cfg.train.device)
    if not stock:
        load_backbone(model, encoder)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    trainer_class = AMPTrainer if cfg.train.amp.enabled else SimpleTrainer
    trainer = trainer_class(model, instantiate(cfg.dataloader.train), optimizer)
    with EventStorage() as storage:
        def step():
            trainer.run_step()
            storage.step()
        result = time_steps(step, iters, warmup, torch.device(cfg.train.device))
    return dict(model="detectron2 stock ViTDet (MAE)" if stock else "SemAIM config",
                s_per_iter=round(result["s_per_iter"], 4),
                **spread(result), peak_mem_gib=result["peak_mem_gib"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--config", default="det/configs/vitdet_semaim.py")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--encoder", default="/tmp/semaim_det_bench_encoder.pth", help="written if missing")
    ap.add_argument("opts", nargs="*", help="config overrides key=value")
    args = ap.parse_args(argv)
    register_tiny_coco()
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config), [
        "dataloader.train.dataset.names=tiny_coco_train", f"dataloader.train.total_batch_size={args.batch}",
        *args.opts])
    net = cfg.model.backbone.net
    model = build_model("semaim_vit_base_patch16", img_size=net.get("pretrain_img_size", 224), embed_dim=net.embed_dim,
                        depth=net.depth, num_heads=net.num_heads)
    save_atomic(export_encoder(model), args.encoder)
    rows = [measure(cfg, stock, args.encoder, args.iters, args.warmup) for stock in (True, False)]
    for r in rows:
        print(json.dumps(r))
    ratio = rows[1]["s_per_iter"] / rows[0]["s_per_iter"]
    print(f"SemAIM / stock seconds per iteration: {ratio:.3f} (batch {args.batch}, {args.iters} iterations, "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'})")


if __name__ == "__main__":
    command(main)()
