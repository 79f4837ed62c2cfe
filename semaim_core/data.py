"""Pretraining images: an ImageFolder (ImageNet layout) or a flat folder, with the MAE/SemAIM
augmentation (RandomResizedCrop 0.2-1.0, bicubic, flip). Labels are ignored."""
from __future__ import annotations

import contextlib
import io
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms

from .errors import DataError, UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# PIL's own refusal threshold (2 x Image.MAX_IMAGE_PIXELS): past it an image may be a decompression bomb
MAX_IMAGE_PIXELS = 2 * 89_478_485


class UnreadableImageError(UserError, OSError):
    pass


def pretrain_transform(img_size: int) -> transforms.Compose:
    return transforms.Compose([
        transforms.RandomResizedCrop(img_size, scale=(0.2, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ])


def eval_crop_pct(img_size: int) -> float:
    """The crop's share of the resized image: 0.875 (224 of 256, as MAE's and the authors'
    evaluation), and no margin above 224 px."""
    return 224 / 256 if img_size <= 224 else 1.0


def eval_transform(img_size: int) -> transforms.Compose:
    """Resize (bicubic) to img_size / ``eval_crop_pct``, then CenterCrop img_size."""
    return transforms.Compose([
        transforms.Resize(int(img_size / eval_crop_pct(img_size)), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(img_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ])


def find_images(root: str | Path) -> list[Path]:
    """Every image below ``root`` (an ImageFolder's class folders or a flat folder), sorted."""
    root = Path(root)
    if not root.is_dir():
        state = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"data folder {root} {state}: pass an ImageNet-style folder (train/<class>/*.JPEG) or a "
                        "folder of images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
    return files


@contextlib.contextmanager
def checked_image(source: str | Path | io.BytesIO, max_image_pixels: int, name: str | Path | None = None):
    """The opened image (its header read) of a file or of its bytes (``name``: the file they came
    from), with more than ``max_image_pixels`` pixels (0: no limit) or an unreadable one, here or in
    the ``with`` block that decodes it, an ``UnreadableImageError`` naming the file and the fix."""
    path = name or source
    pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # checked here instead, with a message
    try:
        with Image.open(source) as im:  # reads the header only
            pixels = im.width * im.height
            if max_image_pixels and pixels > max_image_pixels:
                raise UnreadableImageError(
                    f"image {path} is {im.width} x {im.height} = {pixels:,} pixels, more than the limit of "
                    f"{max_image_pixels:,} (PIL's guard against decompression bombs). If it is a real image, pass "
                    f"--max-image-pixels {pixels} (0: no limit); or --skip-unreadable to skip such files (they are "
                    "counted).")
            yield im
    except UnreadableImageError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise UnreadableImageError(f"cannot read image {path}: {e}. Remove or replace it, or pass "
                                   "--skip-unreadable to skip such files (they are counted).") from e
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit


class ImageDataset(torch.utils.data.Dataset):
    """Images found under a folder (or an explicit list of files). An unreadable image, or one of
    more than ``max_image_pixels`` pixels (0: no limit), raises an error naming the file, unless
    ``skip_unreadable`` is set: then the next readable image stands in and the file is counted."""

    def __init__(self, source: str | Path | list, transform, skip_unreadable: bool = False,
                 max_image_pixels: int = MAX_IMAGE_PIXELS):
        self.files = [Path(f) for f in source] if isinstance(source, list) else find_images(source)
        self.transform = transform
        self.skip_unreadable = skip_unreadable
        self.max_image_pixels = max_image_pixels
        self.skipped: set[str] = set()  # per worker process; the trainer reports the total it sees

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Image.Image:
        with checked_image(self.files[index], self.max_image_pixels) as im:
            return im.convert("RGB")

    def __getitem__(self, index: int):
        _, image = first_readable(self.files, index, lambda i: self.transform(self.load(i)), self.skip_unreadable,
                                  self.skipped)
        return image, len(self.skipped)


def first_readable(files: list, index: int, read, skip_unreadable: bool, skipped: set, first: int = 0):
    """(attempt, ``read(i)``) for the first of ``files`` from ``index + first`` on (wrapping around)
    that ``read`` reads: an unreadable one raises, unless ``skip_unreadable``: then it is added to
    ``skipped`` and the next one stands in."""
    for attempt in range(first, len(files)):
        i = (index + attempt) % len(files)
        try:
            return attempt, read(i)
        except UnreadableImageError:
            if not skip_unreadable:
                raise
            skipped.add(str(files[i]))
    raise UnreadableImageError(f"none of the {len(files)} images is readable")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation draws in one epoch."""
    return (seed * 1_000_003 + epoch) * 10_000_019 + index


class SeededSamples(torch.utils.data.Dataset):
    """Draws each sample's augmentation from generators seeded by (seed, epoch, index), with keys
    ``(epoch, index)`` (``EpochKeys``): the images a run trains on depend neither on the number of
    loader workers nor on where the run was resumed. torch's, Python's and numpy's generators are
    seeded (torchvision draws from the first, timm's RandAugment and crops from the second) and
    restored after, so loading leaves the caller's draws (drop path, orders, mixup) alone."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        seed = sample_seed(self.seed, epoch, index)
        python, numpy = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % 2 ** 32)
                return self.dataset[index]
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


class EpochKeys(torch.utils.data.Sampler):
    """A sampler's indices as the ``(epoch, index)`` keys of ``SeededSamples``."""

    def __init__(self, sampler):
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((self.epoch, i) for i in self.sampler)

    def __len__(self):
        return len(self.sampler)
