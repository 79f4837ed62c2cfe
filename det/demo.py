#!/usr/bin/env python
"""Draw a trained detector's predictions on images (detectron2's Visualizer), one PNG per image.

    python -m det.demo --config vitdet_semaim_tiny_coco.py \\
        --checkpoint output/vitdet_semaim_tiny_coco/model_final.pth \\
        --input data/tiny_coco/val2017 --output vis/ --confidence 0.5
"""
import argparse
import logging
from pathlib import Path

import numpy as np
import torch

import det  # noqa: F401  (first: it quiets detectron2's import-time warning)

# isort: split
from detectron2.config import LazyConfig, instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import Visualizer

from det.checkpoint import load_detector
from det.data import class_names, register_tiny_coco
from det.train_net import apply_overrides
from semaim_core.configs import resolve_config
from semaim_core.data import find_images
from semaim_core.errors import HelpFormatter, command

CONFIGS = Path(__file__).resolve().parent / "configs"
logger = logging.getLogger("det.demo")  # by name: run with -m, __name__ is __main__


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--config", required=True, help="the LazyConfig the detector was trained with (path or name)")
    ap.add_argument("--checkpoint", required=True, help="the trained detector (model_final.pth)")
    ap.add_argument("--input", nargs="+", required=True, help="image files or folders")
    ap.add_argument("--output", required=True, help="folder for the drawn PNGs")
    ap.add_argument("--confidence", type=float, default=0.5, help="draw predictions scoring at least this")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    ap.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                    help="config overrides KEY=VALUE, last on the line (as detectron2's demo); +KEY=VALUE sets a "
                         "key the config leaves at its default: +model.roi_heads.box_predictor.test_topk_per_image=20")
    args = ap.parse_args(argv)

    register_tiny_coco()
    cfg = LazyConfig.load(resolve_config(args.config, CONFIGS))
    cfg = apply_overrides(cfg, args.opts)
    model = instantiate(cfg.model).to(args.device).eval()
    load_detector(model, args.checkpoint)
    resize = T.AugmentationList([instantiate(a) for a in cfg.dataloader.test.mapper.augmentations])
    dataset = cfg.dataloader.test.dataset.names
    dataset = dataset if isinstance(dataset, str) else dataset[0]
    metadata = MetadataCatalog.get(dataset)
    if not class_names(dataset):
        logger.warning(f"WARNING: no class names for {dataset} (its annotation file {metadata.get('json_file')} is not "
                       "here): boxes are labelled by class index. Name a dataset that is present with "
                       "--opts dataloader.test.dataset.names=NAME")
    files = [f for p in args.input for f in (find_images(p) if Path(p).is_dir() else [Path(p)])]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    fmt = cfg.model.input_format
    for path in files:
        image = read_image(str(path), format=fmt)
        inputs = T.AugInput(image)
        resize(inputs)
        tensor = torch.as_tensor(np.ascontiguousarray(inputs.image.transpose(2, 0, 1)))
        with torch.no_grad():
            instances = model([{"image": tensor, "height": image.shape[0], "width": image.shape[1]}])[0]["instances"]
        instances = instances[instances.scores >= args.confidence].to("cpu")
        rgb = image if fmt == "RGB" else image[:, :, ::-1]
        drawn = Visualizer(rgb, metadata).draw_instance_predictions(instances)
        drawn.save(str(out / f"{path.stem}.png"))
        logger.info(f"{path}: {len(instances)} predictions >= {args.confidence} -> {out / path.stem}.png")
    return len(files)


if __name__ == "__main__":
    command(main)()
