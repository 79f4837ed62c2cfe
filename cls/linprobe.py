#!/usr/bin/env python
"""Linear probing, the authors' main_linprobe.py recipe (their README runs it with --cls_token): a
BatchNorm without affine + linear classifier on the frozen, normalized [CLS] feature, SGD momentum
0.9, no weight decay, blr 0.1 at effective batch 4096 (512 per process x 8), no warm-up, 90
epochs, Resize 224 + RandomCrop 224 + flip for training, Resize 256 + CenterCrop 224 for evaluation.

    torchrun --nproc_per_node 8 -m cls.linprobe --data /data/imagenet --encoder runs/semaim_b/encoder.pth \
        --output-dir runs/lin_semaim_b
"""

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms

from cls.backbone import timm_vit_from_encoder
from cls.data import image_folders
from cls.engine import EpochTrainer, base_parser, start
from semaim_core.data import eval_transform
from semaim_core.distributed import world_size
from semaim_core.errors import command


def parse_args(argv=None):
    ap = base_parser(__doc__, batch_size=512)
    ap.add_argument("--epochs", type=int, default=90, help="training epochs")
    ap.add_argument("--warmup-epochs", type=int, default=0, help="linear warm-up epochs (the authors: none)")
    ap.add_argument("--blr", type=float, default=0.1, help="base lr: lr = blr x effective batch / 256")
    ap.add_argument("--weight-decay", type=float, default=0.0, help="SGD weight decay")
    ap.add_argument("--pool", choices=["cls", "avg"], default="cls",
                    help="cls: the normalized [CLS] (the authors' --cls_token); avg: mean of patch tokens + fc_norm")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="autocast dtype")
    ap.add_argument("--clip-grad", type=float, default=None, help="gradient-norm clipping (off by default)")
    return ap.parse_args(argv)


def transforms_for(args):
    train = transforms.Compose([
        transforms.Resize(args.img_size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomCrop(args.img_size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
    return train, eval_transform(args.img_size)


def model_and_optimizer(args, num_classes: int, world: int = 1):
    """Frozen encoder; BatchNorm (no affine) + linear head (init std 0.01); SGD momentum 0.9."""
    model = timm_vit_from_encoder(args.encoder, img_size=args.img_size, num_classes=num_classes,
                global_pool="avg" if args.pool == "avg" else "token")
    model.requires_grad_(False)
    model.head = torch.nn.Sequential(torch.nn.BatchNorm1d(model.embed_dim, affine=False, eps=1e-6),
                                     torch.nn.Linear(model.embed_dim, num_classes))
    torch.nn.init.trunc_normal_(model.head[1].weight, std=0.01)
    torch.nn.init.zeros_(model.head[1].bias)
    lr = args.blr * args.batch_size * world / 256
    return model, torch.optim.SGD(model.head.parameters(), lr=lr, momentum=0.9, weight_decay=args.weight_decay)


def main(argv=None):
    args = parse_args(argv)
    start(args)
    train_set, val_set = image_folders(args.data, *transforms_for(args), args.fit_images)
    model, optimizer = model_and_optimizer(args, len(train_set.classes), world_size())
    trainer = EpochTrainer(args, model, train_set, val_set, optimizer, torch.nn.CrossEntropyLoss())
    return trainer.fit("linprobe")


if __name__ == "__main__":
    command(main)()
