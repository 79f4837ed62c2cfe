#!/usr/bin/env python
"""Derive the COCO-Stuff-layout semantic maps, the depth scenes (NYU layout) and the object-crop
ImageFolder from tiny_coco.

    python tools/prepare_tiny_coco.py --source data/tiny_coco --out data/derived
"""
import argparse
import json
import sys
from dataclasses import fields

from semaim_core.errors import HelpFormatter, command
from tools.lib.coco_derive import CropSettings, DatasetError, derive


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--source", default="data/tiny_coco",
                    help="COCO-format root with annotations/, train2017/, val2017/")
    ap.add_argument("--out", default="data/derived", help="writes OUT/coco_stuff, OUT/depth_scenes and OUT/crops")
    for f in fields(CropSettings):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default, help="crop setting")
    args = ap.parse_args(argv)
    settings = CropSettings(**{f.name: getattr(args, f.name) for f in fields(CropSettings)})
    try:
        manifests = derive(args.source, args.out, settings)
    except DatasetError as e:
        sys.exit(f"error: {e}")
    for name, m in manifests.items():
        print(f"{args.out}/{name}: {json.dumps(m['counts'])}")


if __name__ == "__main__":
    command(main)()
