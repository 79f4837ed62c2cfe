"""Fail early, naming the expected layout, when a config's dataset is not on disk."""
from __future__ import annotations

import os

from semaim_core.errors import DataError

LAYOUT_HINTS = {
    "ADE20KDataset": "ADE20K must be laid out as data/ade/ADEChallengeData2016/{images,annotations}/"
                     "{training,validation} (mmseg's layout; set data_root with --cfg-options or a symlink)",
    "COCOStuffDataset": "COCO-Stuff needs images/{train2017,val2017} and annotations/{train2017,val2017}/"
                        "*_labelTrainIds.png; for the bundled tiny set run `make data` "
                        "(tools/prepare_tiny_coco.py writes data/derived/coco_stuff)",
    "NYUDataset": "NYU Depth v2 must be laid out as data/nyu/{images,annotations}/{train,test}/ with "
                  "<scene>_<number>.jpg images and same-named 16-bit PNG depth in millimetres (mmseg's layout, "
                  "written by mmseg's tools/dataset_converters/nyu.py; docs/depth.md); set data_root with "
                  "--cfg-options or a symlink",
}


def check_dataset(dataset_cfg) -> None:
    root = dataset_cfg.get("data_root", "")
    prefix = dataset_cfg.get("data_prefix", {})
    for key in ("img_path", "depth_map_path" if "depth_map_path" in prefix else "seg_map_path"):
        path = os.path.join(root, prefix.get(key, ""))
        if not os.path.isdir(path):
            kind = dataset_cfg.get("type", "the dataset")
            raise DataError(f"{kind}: {path} does not exist. "
                            + LAYOUT_HINTS.get(kind, f"expected {key} under data_root {root!r}"))
