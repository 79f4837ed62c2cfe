"""The derived semantic maps and object crops (tools.lib.coco_derive) on the bundled tiny_coco."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from tools.lib.coco_derive import COCO_THING_IDS, IGNORE_INDEX, THING_TRAIN_ID, DatasetError, derive


def test_thing_train_ids_follow_coco_stuff():
    # COCO-Stuff-164k: train id = category id - 1 with the 11 unused thing ids squeezed out.
    assert len(COCO_THING_IDS) == 80
    assert THING_TRAIN_ID[1] == 0 and THING_TRAIN_ID[11] == 10 and THING_TRAIN_ID[13] == 11
    assert THING_TRAIN_ID[90] == 79


def test_layout_is_mmsegs_coco_stuff(derived, tiny_coco):
    root = derived / "coco_stuff"
    for split in ("train2017", "val2017"):
        images = sorted(p.stem for p in (root / "images" / split).glob("*.jpg"))
        labels = sorted(p.name[: -len("_labelTrainIds.png")] for p in (root / "annotations" / split).glob("*.png"))
        assert len(images) == 50 and images == labels
        ann = json.loads((tiny_coco / "annotations" / f"instances_{split}.json").read_text())
        assert sorted(p["file_name"][:-4] for p in ann["images"]) == images


@pytest.mark.parametrize("index", [0, 7, 23, 41])
def test_semantic_maps_agree_with_instance_masks(derived, tiny_coco, index):
    coco = COCO(str(tiny_coco / "annotations" / "instances_val2017.json"))
    img_id = sorted(coco.imgs)[index]
    info = coco.imgs[img_id]
    label = np.array(Image.open(derived / "coco_stuff" / "annotations" / "val2017" /
                                info["file_name"].replace(".jpg", "_labelTrainIds.png")))
    assert label.shape == (info["height"], info["width"]) and label.dtype == np.uint8

    per_class = {}
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img_id], iscrowd=None)):
        m = coco.annToMask(ann).astype(bool)
        tid = THING_TRAIN_ID[ann["category_id"]]
        per_class[tid] = per_class.get(tid, np.zeros_like(m)) | m
    assert per_class, "pick images with instances"
    covered = np.any(list(per_class.values()), axis=0)
    # labelled pixels are exactly the union of the instances
    np.testing.assert_array_equal(label != IGNORE_INDEX, covered)
    coverage = np.sum(list(per_class.values()), axis=0)
    for tid, union in per_class.items():
        n = int((label == tid).sum())
        only_this = int((union & (coverage == 1)).sum())
        # every pixel of class c lies inside an instance of c; pixels only c covers are all c
        assert not np.any((label == tid) & ~union)
        assert only_this <= n <= int(union.sum())
    assert set(np.unique(label)) <= set(per_class) | {IGNORE_INDEX}


def test_crops_load_through_imagefolder(derived):
    from torchvision.datasets import ImageFolder

    train = ImageFolder(str(derived / "crops" / "train"))
    val = ImageFolder(str(derived / "crops" / "val"))
    assert train.classes == val.classes and "person" in train.classes and len(train.classes) >= 5
    counts = np.bincount(train.targets, minlength=len(train.classes))
    assert counts.min() >= 5 and np.bincount(val.targets, minlength=len(val.classes)).min() >= 2
    img, target = train[0]
    assert img.mode == "RGB" and min(img.size) >= 16 and 0 <= target < len(train.classes)


def test_two_builds_are_identical_byte_for_byte(derived, tiny_coco, tmp_path):
    again = tmp_path / "again"
    derive(tiny_coco, again)
    files = sorted(p.relative_to(derived) for p in derived.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file()) and len(files) > 100
    differ = [str(f) for f in files if (derived / f).read_bytes() != (again / f).read_bytes()]
    assert differ == [], differ[:5]


def test_reuses_a_finished_build(derived, tiny_coco):
    stamp = (derived / "crops" / "manifest.json").stat().st_mtime_ns
    derive(tiny_coco, derived)
    assert (derived / "crops" / "manifest.json").stat().st_mtime_ns == stamp


@pytest.fixture
def source_copy(tiny_coco, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_coco, src)
    return src


def test_missing_source_is_named(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        derive(tmp_path / "nowhere", tmp_path / "out")


def test_missing_split_names_expected_layout(source_copy, tmp_path):
    (source_copy / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(DatasetError, match="instances_val2017.json"):
        derive(source_copy, tmp_path / "out")
    assert not (tmp_path / "out" / "coco_stuff").exists()  # nothing half-written


def test_corrupt_image_is_named(source_copy, tmp_path):
    victim = sorted((source_copy / "val2017").glob("*.jpg"))[5]
    victim.write_bytes(victim.read_bytes()[:2000])  # truncated JPEG
    with pytest.raises(DatasetError, match=victim.name):
        derive(source_copy, tmp_path / "out")


def test_a_decompression_bomb_and_an_empty_annotation_file_are_named(source_copy, tiny_coco, tmp_path):
    (source_copy / "annotations" / "instances_val2017.json").write_text("")
    with pytest.raises(DatasetError, match=r"instances_val2017.json is empty \(0 bytes of annotations\)"):
        derive(source_copy, tmp_path / "out")
    shutil.copy(tiny_coco / "annotations" / "instances_val2017.json", source_copy / "annotations")
    victim = sorted((source_copy / "train2017").glob("*.jpg"))[0]
    Image.new("L", (20_000, 20_000)).save(victim, format="PNG")  # 400 Mpx in a few hundred kB, named .jpg
    ann_file = source_copy / "annotations" / "instances_train2017.json"
    data = json.loads(ann_file.read_text())
    next(im for im in data["images"] if im["file_name"] == victim.name).update(width=20_000, height=20_000)
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=f"image .*{victim.name} is too large to decode safely.*decompression bomb"):
        derive(source_copy, tmp_path / "out2")


def test_annotation_for_missing_file_is_named(source_copy, tmp_path):
    victim = sorted((source_copy / "train2017").glob("*.jpg"))[0]
    victim.unlink()
    with pytest.raises(DatasetError, match=f"lists image {victim.name}"):
        derive(source_copy, tmp_path / "out")


@pytest.mark.parametrize("kind,field", [("annotations", "category_id"), ("images", "height"),
                                        ("annotations", "image_id")])
def test_a_record_missing_a_field_is_named(source_copy, tmp_path, kind, field):
    ann_file = source_copy / "annotations" / "instances_train2017.json"
    data = json.loads(ann_file.read_text())
    victim = data[kind][3]
    del victim[field]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=rf"instances_train2017.json: {kind[:-1]} id {victim['id']} lacks the "
                                           rf"field '{field}'"):
        derive(source_copy, tmp_path / "out")


def test_an_exif_rotated_image_gets_its_labels_rotated_as_the_loader_reads_it(derived, source_copy, tmp_path):
    """COCO annotates the stored pixels; mmseg's loaders apply the EXIF orientation or not (by backend and
    color type): the image is written upright without the tag, and the label turned with it."""
    import cv2

    victim = sorted((source_copy / "train2017").glob("*.jpg"))[0]
    with Image.open(victim) as im:
        exif = im.getexif()
        exif[0x0112] = 6  # stored sideways: shown rotated 90 degrees clockwise
        im.save(victim, exif=exif, quality=95)
    out = tmp_path / "out"
    derive(source_copy, out)
    name = f"{victim.stem}_labelTrainIds.png"
    upright = np.array(Image.open(derived / "coco_stuff" / "annotations" / "train2017" / name))
    rotated = np.array(Image.open(out / "coco_stuff" / "annotations" / "train2017" / name))
    assert np.array_equal(rotated, np.rot90(upright, k=-1))  # the same labels, turned as the image is shown
    image = cv2.imread(str(out / "coco_stuff" / "images" / "train2017" / victim.name))
    assert image.shape[:2] == rotated.shape
    # the image is stored upright, untagged: mmseg's loaders agree with the label whatever the backend and color type
    from mmcv.transforms import LoadImageFromFile
    for backend in ("cv2", "pillow"):
        for color in ("color", "unchanged"):
            loaded = LoadImageFromFile(imdecode_backend=backend, color_type=color)(dict(img_path=str(
                out / "coco_stuff" / "images" / "train2017" / victim.name)))
            assert loaded["img"].shape[:2] == rotated.shape, (backend, color)
