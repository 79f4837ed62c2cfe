#!/usr/bin/env python
"""Linear probing: BatchNorm (no affine) + linear classifier on the frozen [CLS] feature of a
SemAIM encoder, LARS, 90 epochs (MAE's protocol).

    torchrun --nproc_per_node 8 cls/linprobe.py --data /data/imagenet --encoder runs/semaim_b/encoder.pth \
        --output-dir runs/lin_semaim_b --batch-size 2048
"""
import os
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo root, not cls/

import torch  # noqa: E402
from timm.optim import Lars  # noqa: E402

from cls.common import EpochTrainer, base_parser, image_folders, vit  # noqa: E402
from semaim_core.data import eval_transform  # noqa: E402
from semaim_core.optim import build_scheduler  # noqa: E402


def main(argv=None):
    ap = base_parser(__doc__)
    ap.add_argument("--epochs", type=int, default=90)
    ap.add_argument("--warmup-epochs", type=int, default=10)
    ap.add_argument("--blr", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--clip-grad", type=float, default=None)
    args = ap.parse_args(argv)

    from torchvision import transforms
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    train_tf = transforms.Compose([
        transforms.RandomResizedCrop(args.img_size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
    train_set, val_set = image_folders(args.data, train_tf, eval_transform(args.img_size))
    model = vit(args.encoder, img_size=args.img_size, num_classes=len(train_set.classes), global_pool="token")
    model.requires_grad_(False)
    model.head = torch.nn.Sequential(torch.nn.BatchNorm1d(model.embed_dim, affine=False, eps=1e-6),
                                     torch.nn.Linear(model.embed_dim, len(train_set.classes)))
    torch.nn.init.trunc_normal_(model.head[1].weight, std=0.01)
    torch.nn.init.zeros_(model.head[1].bias)
    world = int(os.environ.get("WORLD_SIZE", 1))
    optimizer = Lars(model.head.parameters(), lr=args.blr * args.batch_size * world / 256, weight_decay=args.weight_decay)
    steps = len(train_set) // (args.batch_size * world)
    scheduler = build_scheduler(optimizer, args.epochs * steps, args.warmup_epochs * steps)
    return EpochTrainer(args, model, train_set, val_set, optimizer, scheduler, torch.nn.CrossEntropyLoss()).fit("linprobe")


if __name__ == "__main__":
    main()
