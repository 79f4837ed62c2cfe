#!/usr/bin/env python
"""End-to-end fine-tuning of a SemAIM encoder (the paper's recipe: 100 epochs, AdamW, layer
decay 0.65, RandAugment(9, 0.5), mixup 0.8, cutmix 1.0, label smoothing 0.1, drop path 0.1,
20 warm-up epochs, lr = blr x batch / 256, blr 5e-4).

    torchrun --nproc_per_node 8 cls/finetune.py --data /data/imagenet --encoder runs/semaim_b/encoder.pth \
        --output-dir runs/ft_semaim_b --batch-size 128
"""
import os
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo root, not cls/

import torch  # noqa: E402
from timm.data import Mixup, create_transform  # noqa: E402
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy  # noqa: E402
from timm.optim import param_groups_layer_decay  # noqa: E402
from timm.utils import ModelEmaV3  # noqa: E402

from cls.common import EpochTrainer, base_parser, image_folders, vit  # noqa: E402
from semaim_core.optim import build_scheduler  # noqa: E402


def main(argv=None):
    ap = base_parser(__doc__)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--warmup-epochs", type=int, default=20)
    ap.add_argument("--blr", type=float, default=5e-4)
    ap.add_argument("--min-lr", type=float, default=1e-6)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--layer-decay", type=float, default=0.65)
    ap.add_argument("--drop-path", type=float, default=0.1)
    ap.add_argument("--randaug", default="rand-m9-mstd0.5-inc1", help="timm auto-augment string ('' for none)")
    ap.add_argument("--reprob", type=float, default=0.25)
    ap.add_argument("--mixup", type=float, default=0.8)
    ap.add_argument("--cutmix", type=float, default=1.0)
    ap.add_argument("--smoothing", type=float, default=0.1)
    ap.add_argument("--clip-grad", type=float, default=None)
    ap.add_argument("--model-ema", type=float, default=None, help="EMA decay of the weights (off by default)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    args = ap.parse_args(argv)

    train_tf = create_transform(args.img_size, is_training=True, auto_augment=args.randaug or None,
                                re_prob=args.reprob, interpolation="bicubic")
    val_tf = create_transform(args.img_size, is_training=False, interpolation="bicubic", crop_pct=0.875)
    train_set, val_set = image_folders(args.data, train_tf, val_tf)
    classes = len(train_set.classes)
    model = vit(args.encoder, img_size=args.img_size, num_classes=classes, drop_path_rate=args.drop_path, global_pool="token")
    world = int(os.environ.get("WORLD_SIZE", 1))
    lr = args.blr * args.batch_size * world / 256
    groups = param_groups_layer_decay(model, args.weight_decay, model.no_weight_decay(), layer_decay=args.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=lr)
    steps = len(train_set) // (args.batch_size * world)
    scheduler = build_scheduler(optimizer, args.epochs * steps, args.warmup_epochs * steps, args.min_lr)
    mixing = args.mixup > 0 or args.cutmix > 0
    mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, label_smoothing=args.smoothing,
                  num_classes=classes) if mixing else None
    criterion = SoftTargetCrossEntropy() if mixing else LabelSmoothingCrossEntropy(args.smoothing)
    ema = ModelEmaV3(model, decay=args.model_ema) if args.model_ema else None
    return EpochTrainer(args, model, train_set, val_set, optimizer, scheduler, criterion, mixup, ema).fit("finetune")


if __name__ == "__main__":
    main()
