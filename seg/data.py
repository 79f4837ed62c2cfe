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
}


def check_dataset(dataset_cfg) -> None:
    root = dataset_cfg.get("data_root", "")
    prefix = dataset_cfg.get("data_prefix", {})
    for key in ("img_path", "seg_map_path"):
        path = os.path.join(root, prefix.get(key, ""))
        if not os.path.isdir(path):
            kind = dataset_cfg.get("type", "the dataset")
            raise DataError(f"{kind}: {path} does not exist. "
                            + LAYOUT_HINTS.get(kind, f"expected {key} under data_root {root!r}"))
