"""``--loader gpu``: the CPU workers read each image's bytes and draw its augmentation; decoding
(batched nvJPEG through ``torchvision.io.decode_jpeg``), the crop, its bicubic resize, the flip and
the normalization run on the device, a batch ahead of the step on a stream of its own.

The draws are the default loader's: the random parameters come from the torchvision transform's
own ``get_params`` and ``torch.rand``, under the very seed ``SeededSamples`` gives the same
(seed, epoch, index), so both loaders cut the same boxes from the same images, epoch after epoch
and across a resume; the samplers (each image once per epoch over the ranks) are the same too.
The pixels differ within the interpolation's tolerance: torchvision's tensor bicubic with
antialiasing resizes instead of PIL's, from nvJPEG's decoding instead of libjpeg's (a documented
deviation, docs/fidelity.md). Images nvJPEG cannot decode (not a JPEG, CMYK, some progressive
files) are decoded by PIL in the main process; an unreadable one is named, or with
``--skip-unreadable`` replaced by the next readable image as the default loader does, and counted.

Three transforms have a device form (``Plan``): pretraining's and the linear probe's training
transforms and the evaluation transform. timm's RandAugment, random erasing, mixup and cutmix
(fine-tuning, the attentive probe) have none: those entry points say so.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from torchvision import transforms
from torchvision.io import ImageReadMode, decode_jpeg

from .data import ImageDataset, UnreadableImageError, checked_image, first_readable, sample_seed
from .errors import SettingError

LOADERS = ("torch", "gpu")
JPEG_MAGIC = b"\xff\xd8\xff"


class Plan:
    """A torchvision transform (PIL image -> normalized tensor) split into its random draws, made
    on the CPU from the image's size (``draw``), and its pixel work on a decoded uint8 tensor
    (``apply``). The shapes it knows: RandomResizedCrop + flip (pretraining); Resize + RandomCrop +
    flip (the linear probe); Resize + CenterCrop (evaluation). Each followed by ToTensor, Normalize."""

    SHAPES = {("RandomResizedCrop", "RandomHorizontalFlip"): "resized_crop",
              ("Resize", "RandomCrop", "RandomHorizontalFlip"): "resize_random_crop",
              ("Resize", "CenterCrop"): "resize_center_crop"}

    def __init__(self, transform: transforms.Compose, what: str = "this transform"):
        steps = list(getattr(transform, "transforms", [transform]))
        names = tuple(type(t).__name__ for t in steps)
        self.kind = self.SHAPES.get(names[:-2]) if names[-2:] == ("ToTensor", "Normalize") else None
        if self.kind is None:
            raise SettingError(f"--loader gpu: {what} ({' + '.join(names)}) has no device form (it knows "
                               "RandomResizedCrop + flip, Resize + RandomCrop + flip and Resize + CenterCrop): use "
                               "--loader torch")
        self.steps, self.mean, self.std = steps, steps[-1].mean, steps[-1].std

    def draw(self, seed: int, height: int, width: int) -> dict:
        """The transform's random parameters for an image of this size under ``seed``: the same
        torch draws, in the same order, as the transform makes on the PIL image."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.kind == "resized_crop":
                crop, flip = self.steps[0], self.steps[1]
                box = transforms.RandomResizedCrop.get_params(shape(height, width), crop.scale, crop.ratio)
                return dict(box=tuple(box), flip=bool(torch.rand(1) < flip.p))
            if self.kind == "resize_random_crop":
                resize, crop, flip = self.steps[:3]
                h, w = TF._compute_resized_output_size((height, width), list(to_pair(resize.size, 1)))
                box = transforms.RandomCrop.get_params(shape(h, w), crop.size)
                return dict(box=tuple(box), flip=bool(torch.rand(1) < flip.p))
            return {}

    def apply(self, image: torch.Tensor, params: dict) -> torch.Tensor:
        """``image`` (3, H, W) uint8 to the transform's (3, S, S) uint8, before ToTensor and Normalize."""
        first = self.steps[0]
        if self.kind == "resized_crop":
            out = TF.resized_crop(image, *params["box"], list(first.size), first.interpolation, antialias=True)
        else:
            out = TF.resize(image, list(to_pair(first.size, 1)), first.interpolation, antialias=True)
            out = TF.crop(out, *params["box"]) if self.kind == "resize_random_crop" else \
                TF.center_crop(out, list(self.steps[1].size))
        return out.flip(-1) if params.get("flip") else out


def shape(height: int, width: int) -> torch.Tensor:
    return torch.empty(1, 1, 1).expand(3, height, width)  # get_params reads the size only


def to_pair(size, length: int = 2) -> tuple:
    return tuple(size) if isinstance(size, (list, tuple)) else (size,) * length


class EncodedSamples(torch.utils.data.Dataset):
    """What a loader worker does for ``--loader gpu``: the bytes of the image of a key ((epoch,
    index) with random draws, or an index without), its size read from the header (past the pixel
    limit it is unreadable), and its ``plan``'s draws under the sample's seed."""

    def __init__(self, files: list, plan: Plan, seed: int = 0, targets: list | None = None,
                 skip_unreadable: bool = False, max_image_pixels: int = 0):
        self.files, self.plan, self.seed, self.targets = [Path(f) for f in files], plan, seed, targets
        self.skip_unreadable, self.max_image_pixels = skip_unreadable, max_image_pixels
        self.skipped: set[str] = set()  # per worker process, as ImageDataset's

    def __len__(self):
        return len(self.files)

    def header(self, index: int) -> tuple[Path, bytes, tuple[int, int]]:
        """(path, bytes, (width, height)) of file ``index``; an ``UnreadableImageError`` if it cannot be read."""
        path = self.files[index]
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UnreadableImageError(f"cannot read image {path}: {e}") from e
        with checked_image(io.BytesIO(data), self.max_image_pixels, name=path) as im:
            return path, data, im.size

    def __getitem__(self, key, first: int = 0) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        attempt, (path, data, (width, height)) = first_readable(self.files, index, self.header, self.skip_unreadable,
                                                                self.skipped, first)
        return dict(data=torch.frombuffer(bytearray(data), dtype=torch.uint8), path=str(path), key=key,
                    attempt=attempt, params=self.plan.draw(sample_seed(self.seed, epoch, index), height, width),
                    target=self.targets[index] if self.targets is not None else -1, skipped=len(self.skipped))


class DeviceAugment:
    """A batch of ``EncodedSamples`` items to (the normalized (B, 3, S, S) channels-last batch on
    ``device``, the targets, the most images any worker has skipped so far)."""

    def __init__(self, samples: EncodedSamples, device: torch.device):
        self.samples, self.device = samples, torch.device(device)
        self.mean = torch.tensor(samples.plan.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(samples.plan.std, device=self.device).view(1, 3, 1, 1)

    def decode(self, items: list[dict]) -> list[torch.Tensor | None]:
        """Each JPEG decoded on the device (one batched call; one by one if it fails), None where not."""
        jpegs = [i for i, item in enumerate(items) if bytes(item["data"][:3].tolist()) == JPEG_MAGIC]
        out: list[torch.Tensor | None] = [None] * len(items)
        try:
            decoded = decode_jpeg([items[i]["data"] for i in jpegs], mode=ImageReadMode.RGB, device=self.device)
            for i, image in zip(jpegs, decoded):
                out[i] = image
        except RuntimeError:
            for i in jpegs:
                try:
                    out[i] = decode_jpeg(items[i]["data"], mode=ImageReadMode.RGB, device=self.device)
                except RuntimeError:
                    pass
        return out

    def on_cpu(self, item: dict) -> tuple[dict, torch.Tensor]:
        """``item`` decoded by PIL, as the default loader decodes; an unreadable image is named, or
        with --skip-unreadable the next readable one (its own draws under the same seed) stands in."""
        while True:
            try:
                with checked_image(io.BytesIO(item["data"].numpy().tobytes()), self.samples.max_image_pixels,
                                   name=item["path"]) as im:
                    return item, TF.pil_to_tensor(im.convert("RGB")).to(self.device)
            except UnreadableImageError:
                if not self.samples.skip_unreadable:
                    raise
                self.samples.skipped.add(item["path"])
                item = self.samples.__getitem__(item["key"], first=item["attempt"] + 1)

    def __call__(self, items: list[dict]) -> tuple[torch.Tensor, torch.Tensor, int]:
        crops, targets = [], []
        for item, image in zip(items, self.decode(items)):
            if image is None:
                item, image = self.on_cpu(item)
            crops.append(self.samples.plan.apply(image, item["params"]))
            targets.append(item["target"])
        batch = torch.stack(crops).float().div_(255).sub_(self.mean).div_(self.std)
        skipped = max([item["skipped"] for item in items] + [len(self.samples.skipped)])
        return batch.contiguous(memory_format=torch.channels_last), torch.tensor(targets), skipped


class DeviceLoader:
    """Iterates like the default DataLoader it replaces, yielding (images on ``device``, then the
    targets or, with ``yields="skipped"``, the most images any worker has skipped); ``sampler``,
    ``dataset`` and ``len`` are the underlying loader's. On a GPU the next batch is decoded and
    augmented on a side stream while the caller's step runs on the default one."""

    def __init__(self, samples: EncodedSamples, device: torch.device, batch_size: int, sampler=None,
                 workers: int = 0, drop_last: bool = False, yields: str = "targets", epoch: int = 0):
        self.augment, self.second = DeviceAugment(samples, device), 1 if yields == "targets" else 2
        self.loader = torch.utils.data.DataLoader(samples, batch_size=batch_size, sampler=sampler,
                                                  num_workers=workers, collate_fn=list, drop_last=drop_last,
                                                  generator=torch.Generator().manual_seed(epoch))
        self.sampler, self.dataset = self.loader.sampler, samples

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        device = self.augment.device
        if device.type != "cuda":
            for items in self.loader:
                batch = self.augment(items)
                yield batch[0], batch[self.second]
            return
        side, batches = torch.cuda.Stream(device), iter(self.loader)

        def prepare():
            items = next(batches, None)
            if items is None:
                return None
            with torch.cuda.stream(side):
                return self.augment(items)

        ready = prepare()
        while ready is not None:
            torch.cuda.current_stream(device).wait_stream(side)
            ready[0].record_stream(torch.cuda.current_stream(device))
            current, ready = ready, prepare()  # queued behind this batch on the side stream: overlaps the step
            yield current[0], current[self.second]


def pretraining_loader(images: ImageDataset, seed: int, sampler, batch_size: int, workers: int, epoch: int,
                       device: torch.device) -> DeviceLoader:
    """The trainer's ``--loader gpu``: ``images`` (their transform, unreadable-image settings) for
    ``sampler``'s (epoch, index) keys, yielding (images on ``device``, skipped)."""
    samples = EncodedSamples(images.files, Plan(images.transform, "pretraining's transform"), seed,
                             skip_unreadable=images.skip_unreadable, max_image_pixels=images.max_image_pixels)
    return DeviceLoader(samples, device, batch_size, sampler, workers, drop_last=True, yields="skipped", epoch=epoch)
