#!/usr/bin/env python
"""Picture of the autoregression orders (the paper's Fig. 2) for given images and a checkpoint:
image, similarity map S, then raster / stochastic / similarity / semantic / multi-center orders.

    python tools/visualize_orders.py data/tiny_coco/val2017 --checkpoint runs/demo/encoder.pth --out orders.png
"""
import argparse

from semaim_core.errors import HelpFormatter, command
from tools.lib.visualize import visualize


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("images", nargs="+", help="image files or folders")
    ap.add_argument("--checkpoint", help="any checkpoint the converter reads (default: an untrained encoder)")
    ap.add_argument("--out", default="orders.png", help="the PNG to write")
    ap.add_argument("--img-size", type=int, default=224, help="eval crop size (the position table is resized)")
    ap.add_argument("--num-centers", type=int, default=2, help="most centers of the multi-center order")
    ap.add_argument("--max-images", type=int, default=4, help="images (rows) to draw")
    args = ap.parse_args(argv)
    out = visualize(args.images, args.checkpoint, args.out, args.img_size, args.num_centers, args.max_images)
    print(f"wrote {out}")


cli = command(main)  # the console script (pyproject.toml): bad input as one line, no traceback

if __name__ == "__main__":
    cli()
