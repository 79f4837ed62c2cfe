#!/usr/bin/env python
"""End-to-end fine-tuning of a SemAIM encoder, the authors' main_finetune.py recipe: global average
pooling + fc_norm, head init std 2e-5, 100 epochs, AdamW over layer-decay (0.65) groups,
RandAugment(9, 0.5), RandomErasing 0.25 (pixel), mixup 0.8, cutmix 1.0, label smoothing 0.1, drop
path 0.1, 20 warm-up epochs, lr = blr x effective batch / 256 with blr 5e-4 (batch 1024).

    torchrun --nproc_per_node 8 -m cls.finetune --data /data/imagenet --encoder runs/semaim_b/encoder.pth \
        --output-dir runs/ft_semaim_b --batch-size 128
"""

import torch
from timm.data import create_transform
from timm.optim import param_groups_layer_decay
from timm.utils import ModelEmaV3

from cls.backbone import timm_vit_from_encoder
from cls.data import image_folders
from cls.engine import EpochTrainer, base_parser, mixup_and_criterion, start
from semaim_core.data import eval_transform
from semaim_core.distributed import world_size
from semaim_core.errors import command

# MAE's fine-tuning recipes by size; flags given override them.
RECIPES = {
    "base": dict(epochs=100, warmup_epochs=20, blr=5e-4, layer_decay=0.65, drop_path=0.1),
    "large": dict(epochs=50, warmup_epochs=5, blr=1e-3, layer_decay=0.75, drop_path=0.2),
}


def parse_args(argv=None):
    ap = base_parser(__doc__, no_device_form="fine-tuning's timm RandAugment, random erasing, mixup and cutmix "
                                             "have no device form here")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="base",
                    help="defaults by model size: base (the paper's ViT-B recipe) or large (MAE's ViT-L: 50 epochs, "
                         "5 warm-up, blr 1e-3, layer decay 0.75, drop path 0.2)")
    ap.add_argument("--epochs", type=int, default=100, help="training epochs")
    ap.add_argument("--warmup-epochs", type=int, default=20, help="linear warm-up epochs (per-iteration schedule)")
    ap.add_argument("--blr", type=float, default=5e-4, help="base lr: lr = blr x effective batch / 256")
    ap.add_argument("--min-lr", type=float, default=1e-6, help="floor of the cosine schedule")
    ap.add_argument("--weight-decay", type=float, default=0.05,
                    help="AdamW weight decay (none on 1-D, pos_embed, cls_token)")
    ap.add_argument("--layer-decay", type=float, default=0.65, help="layer-wise lr decay")
    ap.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate")
    ap.add_argument("--pool", choices=["avg", "cls"], default="avg",
                    help="avg: mean of the patch tokens + fc_norm (the authors' default); cls: the normalized [CLS]")
    ap.add_argument("--randaug", default="rand-m9-mstd0.5-inc1", help="timm auto-augment string ('' for none)")
    ap.add_argument("--reprob", type=float, default=0.25, help="RandomErasing probability")
    ap.add_argument("--remode", choices=["pixel", "rand", "const"], default="pixel", help="RandomErasing fill mode")
    ap.add_argument("--mixup", type=float, default=0.8, help="mixup alpha (0: off)")
    ap.add_argument("--cutmix", type=float, default=1.0, help="cutmix alpha (0: off)")
    ap.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    ap.add_argument("--clip-grad", type=float, default=None, help="gradient-norm clipping (off by default)")
    ap.add_argument("--model-ema", type=float, default=None, help="EMA decay of the weights (off by default)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"],
                    help="autocast dtype (the authors: fp16 with a GradScaler)")
    recipe, _ = ap.parse_known_args(argv)
    ap.set_defaults(**RECIPES[recipe.recipe])
    return ap.parse_args(argv)


def transforms_for(args):
    """The authors' build_transform: timm's RandAugment pipeline with RandomErasing, and Resize 256
    (for 224) + CenterCrop for evaluation."""
    train = create_transform(args.img_size, is_training=True, color_jitter=None, auto_augment=args.randaug or None,
                             interpolation="bicubic", re_prob=args.reprob, re_mode=args.remode, re_count=1)
    return train, eval_transform(args.img_size)


def model_and_optimizer(args, num_classes: int, world: int = 1):
    """timm ViT with the encoder, head init std 2e-5, AdamW over the authors' layer-decay groups."""
    model = timm_vit_from_encoder(args.encoder, img_size=args.img_size, num_classes=num_classes,
                                  drop_path_rate=args.drop_path,
                global_pool="avg" if args.pool == "avg" else "token")
    torch.nn.init.trunc_normal_(model.head.weight, std=2e-5)
    torch.nn.init.zeros_(model.head.bias)
    groups = param_groups_layer_decay(model, args.weight_decay, model.no_weight_decay(), layer_decay=args.layer_decay)
    return model, torch.optim.AdamW(groups, lr=args.blr * args.batch_size * world / 256)


def main(argv=None):
    args = parse_args(argv)
    start(args)
    train_tf, val_tf = transforms_for(args)
    train_set, val_set = image_folders(args.data, train_tf, val_tf, args.fit_images)
    classes = len(train_set.classes)
    model, optimizer = model_and_optimizer(args, classes, world_size())
    mixup, criterion = mixup_and_criterion(args, classes)
    ema = ModelEmaV3(model, decay=args.model_ema) if args.model_ema else None
    return EpochTrainer(args, model, train_set, val_set, optimizer, criterion, mixup, ema).fit("finetune")


if __name__ == "__main__":
    command(main)()
