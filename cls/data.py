"""ImageFolder data for fine-tuning, linear probing and k-NN: the ImageNet layout, a fit-check
subset, and loaders whose epoch order is a function of (seed, epoch) alone, for exact resume."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.datasets import ImageFolder

from semaim_core.data import MAX_IMAGE_PIXELS, EpochKeys, SeededSamples
from semaim_core.errors import DataError
from semaim_core.gpu_loader import DeviceLoader, EncodedSamples, Plan


def fit_subset(folder: ImageFolder, count: int) -> ImageFolder:
    """The first ``count`` images of ``folder`` taken round-robin over its classes."""
    by_class = {}
    for i, (_, target) in enumerate(folder.samples):
        by_class.setdefault(target, []).append(i)
    order = [i for group in zip(*by_class.values()) for i in group] if by_class else []
    pick = sorted(order[:count])
    folder.samples = folder.imgs = [folder.samples[i] for i in pick]
    folder.targets = [t for _, t in folder.samples]
    return folder


def image_folders(root: str, train_transform, val_transform, fit_images: int | None = None):
    """train/ and val/ ImageFolders; with ``fit_images`` both are the same few training images
    (with the training and the evaluation transform)."""
    check_layout(root, fit_images)
    if fit_images:
        return (fit_subset(ImageFolder(f"{root}/train", train_transform), fit_images),
                fit_subset(ImageFolder(f"{root}/train", val_transform), fit_images))
    train, val = ImageFolder(f"{root}/train", train_transform), ImageFolder(f"{root}/val", val_transform)
    if train.classes != val.classes:
        raise DataError(f"train and val classes differ under {root}: {len(train.classes)} vs {len(val.classes)}")
    return train, val


def check_layout(root: str, fit_images: int | None = None):
    """``root`` holds train/ (and, unless a fit check, val/) folders: checked before a run starts."""
    for split in ("train",) if fit_images else ("train", "val"):
        folder = Path(root) / split
        if not folder.is_dir():
            state = "is a file, not a folder" if folder.exists() else "does not exist"
            raise DataError(f"{folder} {state}: --data must hold train/<class>/* and val/<class>/* (ImageNet "
                            "layout; `make data` writes data/derived/crops)")


def loader(dataset, batch_size, workers, world, rank, shuffle, seed, drop_last, kind="torch", device=None):
    """With ``shuffle`` (training) the order of epoch e is a function of (seed, e) alone
    (``set_epoch``) and each image's augmentation of (seed, e, index) (``SeededSamples``), so a
    resumed run sees the data the uninterrupted one would, whatever the number of workers. Without
    (evaluation) each rank reads its ``shard``. ``kind`` gpu: the same order and draws, the images
    decoded and transformed on ``device`` (semaim_core.gpu_loader)."""
    if shuffle:
        sampler = torch.utils.data.DistributedSampler(dataset, world, rank, shuffle=True, seed=seed) if world > 1 \
            else EpochSampler(dataset, seed)
        sampler = EpochKeys(sampler)
    else:  # evaluation, in order: each image on one rank
        sampler = shard(range(len(dataset)), rank, world)
    if kind == "gpu":
        samples = EncodedSamples([path for path, _ in dataset.samples], Plan(dataset.transform, "this transform"),
                                 seed, targets=dataset.targets, max_image_pixels=MAX_IMAGE_PIXELS)
        return DeviceLoader(samples, device, batch_size, sampler, workers, drop_last, yields="targets")
    if shuffle:
        dataset = SeededSamples(dataset, seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                       drop_last=drop_last, pin_memory=torch.cuda.is_available())


def shard(dataset, rank: int, world: int) -> torch.utils.data.Dataset:
    """This rank's share of an evaluation set (the loaders take it of the set's indices), every
    world-th image: each image is scored once over all ranks (a DistributedSampler pads the last
    shard with repeats, which a score counts twice)."""
    return dataset if world == 1 else torch.utils.data.Subset(dataset, range(rank, len(dataset), world))


class EpochSampler(torch.utils.data.RandomSampler):
    def __init__(self, dataset, seed: int):
        super().__init__(dataset, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int):
        self.generator.manual_seed(self.seed * 100_003 + epoch)
