"""Derive the suite's small semantic-segmentation and classification sets from COCO instances.

From a COCO-format source (``annotations/instances_{split}.json`` + ``{split}/*.jpg``, e.g. the
bundled ``data/tiny_coco``) this writes, deterministically:

* ``coco_stuff/``: mmsegmentation's COCO-Stuff-164k layout, ``images/{split}/*.jpg`` and
  ``annotations/{split}/*_labelTrainIds.png``. Pixels of the 80 thing classes carry their
  COCO-Stuff train id (the index of the category id among the sorted thing ids, i.e. mmseg's
  ``clsID_to_trID`` for things), everything else is 255. Instances are painted largest first so
  that a small object lying on a larger one keeps its label; crowd regions are labelled with
  their class, as in COCO-Stuff.
* ``depth_scenes/``: NYU Depth v2's layout, scenes of known depth rendered over the images
  (``tools.lib.depth_scenes``), for the linear depth protocol's checks.
* ``crops/``: a torchvision ``ImageFolder`` (``{train,val}/<class>/*.jpg``) of non-crowd object
  crops, for the classes with at least ``min_train`` usable instances in the train split and
  ``min_val`` in the val split.

Both are built in a temporary folder and renamed into place, so an interrupted run never leaves
a half-written dataset behind, and a finished one is reused when its source and settings match.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from semaim_core.errors import UserError
from tools.lib.depth_scenes import write_scenes

SPLITS = ("train2017", "val2017")
COCO_THING_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
    28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
    81, 82, 84, 85, 86, 87, 88, 89, 90,
)
THING_TRAIN_ID = {cat_id: i for i, cat_id in enumerate(COCO_THING_IDS)}
IGNORE_INDEX = 255


class DatasetError(UserError, RuntimeError):
    """The COCO source is missing or inconsistent; the message names the file and the fix."""


@dataclass(frozen=True)
class CropSettings:
    min_box_side: int = 16      # px; smaller boxes make unrecognisable crops
    context: float = 0.1        # fraction of the box side added on each side
    min_train: int = 5          # instances a class needs in the train split ...
    min_val: int = 2            # ... and in the val split to be kept


def load_split(source: Path, split: str):
    """Return (COCO api object, image folder) for one split, checking the layout first."""
    from pycocotools.coco import COCO

    ann_file = source / "annotations" / f"instances_{split}.json"
    img_dir = source / split
    if not ann_file.is_file() or not img_dir.is_dir():
        raise DatasetError(
            f"COCO split '{split}' not found under {source}: expected {ann_file} and {img_dir}/ "
            "(the layout of COCO 2017 and of data/tiny_coco)."
        )
    text = ann_file.read_text()
    if not text.strip():
        raise DatasetError(f"{ann_file} is empty (0 bytes of annotations): copy it again from the dataset")
    try:
        dataset = json.loads(text)
    except ValueError as e:
        raise DatasetError(f"{ann_file} is not valid JSON ({e}): copy it again from the dataset") from None
    check_records(ann_file, dataset)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
    for img in coco.imgs.values():
        if not (img_dir / img["file_name"]).is_file():
            raise DatasetError(
                f"{ann_file} lists image {img['file_name']} (id {img['id']}) but {img_dir / img['file_name']} "
                "does not exist: restore the image or remove its record from the annotation file."
            )
    return coco, img_dir


# the fields this tool reads from each kind of record
REQUIRED = dict(images=("id", "file_name", "height", "width"), categories=("id", "name"),
                annotations=("id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"))


def check_records(ann_file: Path, dataset: dict):
    """Every record has the fields the derivation reads; else an error naming the file, the record and the field."""
    for kind, fields in REQUIRED.items():
        if not isinstance(dataset.get(kind), list):
            raise DatasetError(f"{ann_file} has no '{kind}' list: not a COCO instances file")
        for n, record in enumerate(dataset[kind]):
            missing = [f for f in fields if f not in record]
            if missing:
                which = f"id {record['id']}" if "id" in record else f"entry {n}"
                raise DatasetError(f"{ann_file}: {kind[:-1]} {which} lacks the field '{missing[0]}' "
                                   f"(each needs {', '.join(fields)}): repair or remove that record")


# EXIF orientation -> the PIL transpose that shows the image upright. COCO's annotations are in the
# stored pixel frame, but mmseg's loaders apply the orientation or not depending on the backend and
# color_type ('color': applied, 'unchanged': not). An image with an orientation tag is therefore
# written upright without the tag (re-encoded, JPEG quality 95), its label map turned the same way.
EXIF_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                  5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                  8: Image.Transpose.ROTATE_90}


def exif_orientation(path: Path) -> int:
    with Image.open(path) as im:
        return im.getexif().get(0x0112, 1)


def read_image(path: Path, expected_hw: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image fully (a truncated JPEG fails here, not later) and check its size."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except Image.DecompressionBombError as e:  # PIL refuses past 2 x Image.MAX_IMAGE_PIXELS, before decoding
        raise DatasetError(f"image {path} is too large to decode safely ({e}): a decompression bomb, or not an "
                           "image of this dataset. Replace the file or drop it from the annotations.") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot read image {path}: {e}. Replace the file or drop it from the annotations.") from e
    if expected_hw is not None and (im.height, im.width) != tuple(expected_hw):
        raise DatasetError(
            f"image {path} is {im.width}x{im.height} but its annotation says "
            f"{expected_hw[1]}x{expected_hw[0]}: the file does not belong to this annotation record."
        )
    return im


def semantic_map(coco, img_id: int) -> np.ndarray:
    """COCO-Stuff train-id map (uint8, 255 = unlabelled) of one image's thing instances."""
    info = coco.imgs[img_id]
    label = np.full((info["height"], info["width"]), IGNORE_INDEX, dtype=np.uint8)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id], iscrowd=None))
    for ann in sorted(anns, key=lambda a: (-a["area"], a["id"])):  # largest first, ties by id
        label[coco.annToMask(ann).astype(bool)] = THING_TRAIN_ID[ann["category_id"]]
    return label


def _write_semantic(source: Path, out: Path) -> dict:
    counts = {}
    for split in SPLITS:
        coco, img_dir = load_split(source, split)
        (out / "images" / split).mkdir(parents=True)
        (out / "annotations" / split).mkdir(parents=True)
        for img_id in sorted(coco.imgs):
            info = coco.imgs[img_id]
            src = img_dir / info["file_name"]
            read_image(src, (info["height"], info["width"]))
            stem = Path(info["file_name"]).stem
            label = Image.fromarray(semantic_map(coco, img_id))
            orientation = exif_orientation(src)
            if orientation in EXIF_TRANSPOSE:  # stored upright, without the tag: every loader sees one frame
                with Image.open(src) as im:
                    im.transpose(EXIF_TRANSPOSE[orientation]).save(out / "images" / split / info["file_name"],
                                                                   quality=95)
                label = label.transpose(EXIF_TRANSPOSE[orientation])
            else:
                shutil.copyfile(src, out / "images" / split / info["file_name"])
            label.save(out / "annotations" / split / f"{stem}_labelTrainIds.png")
        counts[split] = len(coco.imgs)
    return counts


def _usable_boxes(coco, settings: CropSettings):
    for ann in sorted(coco.anns.values(), key=lambda a: (a["image_id"], a["id"])):  # one decode per image
        if not ann["iscrowd"] and min(ann["bbox"][2:]) >= settings.min_box_side:
            yield ann


def crop_box(bbox, width: int, height: int, context: float) -> tuple[int, int, int, int]:
    """COCO xywh box grown by ``context`` of its size per side, clipped, as integer ltrb."""
    x, y, w, h = bbox
    dx, dy = w * context, h * context
    left, top = max(0, int(np.floor(x - dx))), max(0, int(np.floor(y - dy)))
    right, bottom = min(width, int(np.ceil(x + w + dx))), min(height, int(np.ceil(y + h + dy)))
    return left, top, right, bottom


def _write_crops(source: Path, out: Path, settings: CropSettings) -> dict:
    splits = {"train": load_split(source, "train2017"), "val": load_split(source, "val2017")}
    per_class = {}
    for name, (coco, _) in splits.items():
        for ann in _usable_boxes(coco, settings):
            per_class.setdefault(ann["category_id"], {"train": 0, "val": 0})[name] += 1
    keep = sorted(c for c, n in per_class.items() if n["train"] >= settings.min_train and n["val"] >= settings.min_val)
    if not keep:
        raise DatasetError(f"no class of {source} has {settings.min_train} train and {settings.min_val} val "
                           "instances; lower min_train/min_val.")
    counts = {}
    for name, (coco, img_dir) in splits.items():
        class_dir = {c: coco.cats[c]["name"].replace(" ", "_") for c in keep}
        images = {}
        n = 0
        for ann in _usable_boxes(coco, settings):
            if ann["category_id"] not in class_dir:
                continue
            info = coco.imgs[ann["image_id"]]
            if ann["image_id"] not in images:
                images = {ann["image_id"]: read_image(img_dir / info["file_name"], (info["height"], info["width"]))}
            crop = images[ann["image_id"]].crop(crop_box(ann["bbox"], info["width"], info["height"], settings.context))
            dst = out / name / class_dir[ann["category_id"]]
            dst.mkdir(parents=True, exist_ok=True)
            crop.save(dst / f"{ann['id']:012d}.jpg", quality=95)
            n += 1
        counts[name] = n
    counts["classes"] = [coco.cats[c]["name"] for c in keep]
    return counts


def _source_digest(source: Path) -> str:
    """Hash of the annotation files (images are checked on every build by decoding them)."""
    h = hashlib.sha256()
    for split in SPLITS:
        f = source / "annotations" / f"instances_{split}.json"
        h.update(f.read_bytes() if f.is_file() else b"missing")
    return h.hexdigest()


def _build(out: Path, manifest: dict, write) -> dict:
    """Build into a temporary sibling folder and rename it into place (reused if up to date)."""
    manifest_file = out / "manifest.json"
    if manifest_file.is_file():
        done = json.loads(manifest_file.read_text())
        if {k: done.get(k) for k in manifest} == manifest:
            return done
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        manifest = {**manifest, "counts": write(tmp)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _write_depth_scenes(source: Path, out: Path) -> dict:
    images = {}
    for split in SPLITS:
        coco, img_dir = load_split(source, split)
        images[split] = [read_image(img_dir / coco.imgs[i]["file_name"]) for i in sorted(coco.imgs)]
    return write_scenes(images, out)


def derive(source: Path, out: Path, crops: CropSettings = CropSettings()) -> dict:
    """Write ``out/coco_stuff``, ``out/depth_scenes`` and ``out/crops`` from ``source``; return their manifests."""
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise DatasetError(f"COCO source folder {source} does not exist (expected data/tiny_coco or a COCO 2017 root).")
    digest = _source_digest(source)
    return {
        "coco_stuff": _build(out / "coco_stuff", {"kind": "coco_stuff", "source": digest},
                             lambda d: _write_semantic(source, d)),
        "depth_scenes": _build(out / "depth_scenes", {"kind": "depth_scenes", "source": digest},
                               lambda d: _write_depth_scenes(source, d)),
        "crops": _build(out / "crops", {"kind": "crops", "source": digest, "settings": asdict(crops)},
                        lambda d: _write_crops(source, d, crops)),
    }
