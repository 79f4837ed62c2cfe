"""Datasets for the det configs: the bundled tiny_coco, and checks that named datasets exist."""
from __future__ import annotations

import os
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from semaim_core.errors import DataError, UnknownKeyError

REPO = Path(__file__).resolve().parents[1]
TINY_COCO = REPO / "data" / "tiny_coco"


FIT_IMAGES = 4


def register_tiny_coco(root: Path = TINY_COCO):
    """``tiny_coco_train`` / ``tiny_coco_val``: COCO-format datasets over data/tiny_coco, and
    ``tiny_coco_fit``: the first few training images, to train and score on (a fit check)."""
    for split in ("train", "val"):
        name = f"tiny_coco_{split}"
        if name not in DatasetCatalog.list():
            register_coco_instances(name, {}, str(root / "annotations" / f"instances_{split}2017.json"),
                                    str(root / f"{split}2017"))
    if "tiny_coco_fit" not in DatasetCatalog.list():
        DatasetCatalog.register("tiny_coco_fit", _fit_dicts)
        MetadataCatalog.get("tiny_coco_fit").set(image_root=str(root / "train2017"), evaluator_type="coco")


def class_names(name: str) -> list[str] | None:
    """The dataset's class names in the detector's label order: from its metadata (COCO and LVIS
    carry them from registration), else read from its annotation file as detectron2 reads them
    (categories by id); None when neither is at hand."""
    meta = MetadataCatalog.get(name)
    if not meta.get("thing_classes") and os.path.isfile(meta.get("json_file") or ""):
        DatasetCatalog.get(name)  # reading the annotations sets thing_classes
    return meta.get("thing_classes")


def _fit_dicts():
    dicts = DatasetCatalog.get("tiny_coco_train")[:FIT_IMAGES]
    train, fit = MetadataCatalog.get("tiny_coco_train"), MetadataCatalog.get("tiny_coco_fit")
    if not hasattr(fit, "thing_classes"):  # the train metadata exists once its json was read
        fit.set(thing_classes=train.thing_classes,
                thing_dataset_id_to_contiguous_id=train.thing_dataset_id_to_contiguous_id)
    return dicts


def check_datasets(names) -> None:
    """Fail early, naming the expected layout, when a dataset's files are not there."""
    for name in [names] if isinstance(names, str) else names:
        if name not in DatasetCatalog.list():
            raise UnknownKeyError(f"dataset '{name}' is not registered: use coco_2017_train / coco_2017_val or "
                                  "lvis_v1_train / lvis_v1_val (under $DETECTRON2_DATASETS) or tiny_coco_train / "
                                  "tiny_coco_val")
        meta = MetadataCatalog.get(name)
        json_file, image_root = getattr(meta, "json_file", None), getattr(meta, "image_root", None)
        missing = [p for p in (json_file, image_root) if p and not os.path.exists(p)]
        if missing:
            root = os.environ.get("DETECTRON2_DATASETS", "datasets")
            layout = (f"LVIS v1 must be laid out as {root}/lvis/lvis_v1_{{train,val}}.json, with the COCO 2017 "
                      f"images in {root}/coco/{{train2017,val2017}}/: set DETECTRON2_DATASETS to the folder that "
                      "holds lvis/ and coco/" if name.startswith("lvis") else
                      f"COCO 2017 must be laid out as {root}/coco/{{annotations/instances_{{train,val}}2017.json,"
                      f"train2017/,val2017/}}: set DETECTRON2_DATASETS to the folder that holds coco/")
            raise DataError(f"dataset '{name}' expects {json_file} and {image_root}/, but {missing[0]} does "
                            f"not exist. {layout} (now: {root!r}).")
