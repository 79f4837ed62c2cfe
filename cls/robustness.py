"""Robustness and re-labelled test sets, scored by a trained classifier (``--eval-sets``), each in its
standard layout on disk:

    imagenet-v2      ImageNetV2 (e.g. matched-frequency): <dir>/<class index 0-999>/*.jpeg
    imagenet-real    ImageNet-ReaL: real.json, a list per validation image (ILSVRC2012_val_%08d order)
                     of its reassessed labels, scored on --data's val/; images with no label are left out
    imagenet-a       ImageNet-A: <dir>/<wnid>/*.jpg, 200 classes: the prediction is the best of those 200
    imagenet-r       ImageNet-R: <dir>/<wnid>/*.jpg, 200 classes: the same
    imagenet-sketch  ImageNet-Sketch: <dir>/<wnid>/*.JPEG, all 1000 classes

A class folder's name is a training class's (the wnid, for ImageNet), except ImageNetV2's, which
are class indices. Each image is an evaluation crop (Resize 256 + CenterCrop 224, as for val/)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torchvision.datasets import ImageFolder

from cls.data import loader
from semaim_core.distributed import all_reduce_mean
from semaim_core.errors import DataError, SettingError
from semaim_core.safe_io import check_file

EVAL_SETS = {"imagenet-v2": "ImageNet-V2", "imagenet-real": "ImageNet-ReaL", "imagenet-a": "ImageNet-A",
             "imagenet-r": "ImageNet-R", "imagenet-sketch": "ImageNet-Sketch"}
SUBSET_SETS = ("imagenet-a", "imagenet-r")  # scored over the classes they hold, as their papers do
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})")


def parse_eval_sets(specs: list[str]) -> dict[str, str]:
    """``NAME=PATH`` pairs (see the module's docstring) as {name: path}, each path checked."""
    sets = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or name not in EVAL_SETS:
            raise SettingError(f"--eval-sets {spec}: give NAME=PATH with NAME one of {', '.join(EVAL_SETS)}")
        if name == "imagenet-real":
            check_file(path, "--eval-sets imagenet-real (its real.json)")
        elif not Path(path).is_dir():
            raise DataError(f"--eval-sets {spec}: {path} is not a folder of class folders ({name}'s layout)")
        sets[name] = str(Path(path).resolve())
    return sets


class MultiLabelFolder(torch.utils.data.Dataset):
    """An ImageFolder whose targets are multi-hot vectors over the training classes."""

    def __init__(self, folder: ImageFolder, labels: list[list[int]], num_classes: int):
        keep = [i for i, lab in enumerate(labels) if lab]  # ReaL: no label left after reassessment
        self.folder, self.labels = folder, [labels[i] for i in keep]
        self.samples = [folder.samples[i] for i in keep]
        self.num_classes = num_classes

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        image = self.folder.loader(self.samples[i][0])
        target = torch.zeros(self.num_classes)
        target[self.labels[i]] = 1
        return self.folder.transform(image), target


def eval_set(name: str, path: str, classes: list[str], transform, val_dir: str) -> tuple[MultiLabelFolder, list | None]:
    """The set's images with multi-hot targets over ``classes`` (the classifier's, in its order),
    and the class indices its prediction is taken among (None: all)."""
    if name == "imagenet-real":
        real = json.loads(Path(path).read_text())
        folder = ImageFolder(val_dir, transform)
        labels = []
        for file, _ in folder.samples:
            m = VAL_NAME.search(Path(file).name)
            if not m or not 0 < int(m.group(1)) <= len(real):
                raise DataError(f"{file}: ImageNet-ReaL scores val/ images named ILSVRC2012_val_%08d (1 to "
                                f"{len(real)}, as {path} lists them)")
            labels.append(real[int(m.group(1)) - 1])
        return MultiLabelFolder(folder, labels, len(classes)), None
    folder = ImageFolder(path, transform)
    if name == "imagenet-v2":
        bad = [c for c in folder.classes if not (c.isdigit() and int(c) < len(classes))]
        index = {c: int(c) for c in folder.classes if c not in bad}
    else:
        bad = [c for c in folder.classes if c not in classes]
        index = {c: classes.index(c) for c in folder.classes if c not in bad}
    if bad:
        kind = "class indices 0-%d" % (len(classes) - 1) if name == "imagenet-v2" else "training classes"
        raise DataError(f"{path}: {len(bad)} class folders are not {kind} ({', '.join(bad[:5])}...): is it "
                        f"{EVAL_SETS[name]} in its standard layout, for a classifier of these classes?")
    labels = [[index[folder.classes[t]]] for _, t in folder.samples]
    subset = sorted(index.values()) if name in SUBSET_SETS else None
    return MultiLabelFolder(folder, labels, len(classes)), subset


@torch.no_grad()
def score(model, dataset, subset, args, device, world: int, rank: int, head: int | None = None) -> float:
    """Top-1 (%): the prediction (among ``subset`` if given) is one of the image's labels. ``head``:
    which head of a model that returns several side by side (the attentive probe's grid)."""
    model.eval()
    data = loader(dataset, args.batch_size, args.num_workers, world, rank, False, 0, False)
    hits = torch.zeros(2, device=device)
    index = None if subset is None else torch.tensor(subset, device=device)
    for images, target in data:
        logits = model(images.to(device)).float()
        if head is not None:
            logits = logits[head]
        target = target.to(device)
        if index is not None:
            pred = index[logits[:, index].argmax(1)]
        else:
            pred = logits.argmax(1)
        hits += torch.stack([target.gather(1, pred[:, None]).sum(), torch.tensor(float(len(pred)), device=device)])
    hits = all_reduce_mean(hits, world) * world
    return round(float(100 * hits[0] / hits[1]), 3)


def check_eval_sets(args):
    """Every set of ``args.eval_sets`` readable in its layout for the classes of ``args.data``'s
    train/: checked before a run starts, not after it trained."""
    classes = sorted(d.name for d in Path(args.data, "train").iterdir() if d.is_dir())
    for name, path in parse_eval_sets(args.eval_sets or []).items():
        eval_set(name, path, classes, None, f"{args.data}/val")


def score_eval_sets(model, args, classes, transform, device, world: int, rank: int, head: int | None = None) -> dict:
    """{name: {top1, images, dataset (its name in the tables), path}} for every set of ``args.eval_sets``."""
    out = {}
    for name, path in parse_eval_sets(args.eval_sets or []).items():
        dataset, subset = eval_set(name, path, classes, transform, f"{args.data}/val")
        out[name] = dict(top1=score(model, dataset, subset, args, device, world, rank, head), images=len(dataset),
                         dataset=EVAL_SETS[name], path=path)
    return out
