#!/usr/bin/env python
"""Attentive probing, AIM's protocol (El-Nouby et al., "Scalable Pre-training of Large
Autoregressive Image Models", 2024): a frozen encoder, and a head that cross-attends from one
learnable query to the patch tokens, then classifies. A linear probe on [CLS] measures an
autoregressive encoder poorly: the authors' encoder [CLS] attends only to itself in pretraining.

The head is AIM's ``AttentionPoolingClassifier`` (apple/ml-aim, aim/v1/torch/layers.py): BatchNorm
without affine over the tokens, the query (init N(0, 0.02)) against bias-free k and v projections
with the encoder's head count, softmax attention, and a bias-free linear classifier. Its input is
the patch tokens averaged over a set of blocks, before the final norm (AIM's "last layers" feature,
aim/v1/torch/models.py). Evaluation is Resize 256 + CenterCrop 224, bicubic (aim/v1/torch/data.py).
ml-aim ships no probe training; two published recipes are presets (``--preset``), the first the
default. Both share:

    optimizer        AdamW, betas (0.9, 0.999)
    schedule         100 epochs, 5 warm-up, cosine to 1e-5, lrs given at batch 1024 (128 x 8)
    gradient clip    3.0
    augmentation     RandomResizedCrop 224 (scale 0.08-1, ratio 3/4-4/3, bicubic), flip 0.5,
                     color jitter 0.3, RandAugment rand-m9-mstd0.5-inc1

    xtra   the AIM paper's attentive-probe table (its appendix), the grid XTRA's configs use:
           peak lr grid 1e-4, 3e-4, 5e-4, 1e-3, 1.5e-3, 2e-3, 4e-3 at batch 1024, weight decay 0.1,
           mixup 0.8, cutmix 1.0, label smoothing 0.1, the last 6 blocks
    aimv2  AIMv2's Table A2 (Fini et al., 2024; its baselines AIMv1, MAE and DINOv2 included):
           lr grid 5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3, weight decay grid 0.05, 0.1, no mixup,
           cutmix or label smoothing, the last block (its other settings are not restated here: the
           preset keeps the shared ones above)

``--probe-layers``: last6 (the mean of the last 6 blocks), last1 (the last block), mid6 (six
blocks from the middle on: blocks 12-17 of 24, ml-aim's ``constants.LAYERS_BEST`` for AIM-1B and
AIM-3B, whose headline numbers use them; of 12 blocks, the last 6), lastN / midN for other counts,
or block indices (0-based, comma-separated: 12,13,14).

One head per lr x weight decay of the grid trains side by side on the same frozen features (one
encoder pass per batch), from the same initial weights, each with its own optimizer group and its
own gradient clipping, so each head is exactly what a run at that lr and weight decay alone trains.
The reported top-1 is the best head's, as a grid search reports it; cls_metrics.json keeps every
head's (``head_top1``, in the order of ``grid``), and ``train_loss`` in log.jsonl is the heads' sum.
The lr scales linearly with the effective batch (lr x batch / 1024). The linear weights and k/v use
Xavier uniform, as AIM's training framework does (apple/ml-l3m, l3m/model/heads/classifier.py).

    torchrun --nproc_per_node 8 -m cls.attnprobe --data /data/imagenet --encoder runs/semaim_b/encoder.pth \
        --output-dir runs/attn_semaim_b
"""
import copy
import logging
import re

import torch
import torch.nn.functional as F
from timm.data import create_transform

from cls.backbone import timm_vit_from_encoder
from cls.data import image_folders
from cls.engine import EpochTrainer, base_parser, mixup_and_criterion, start
from semaim_core.data import eval_transform
from semaim_core.distributed import world_size
from semaim_core.errors import SettingError, command, non_negative_float, positive_float

PRESETS = {  # each value's source: the module's docstring
    "xtra": dict(lr_grid=[1e-4, 3e-4, 5e-4, 1e-3, 1.5e-3, 2e-3, 4e-3], weight_decay=[0.1], mixup=0.8, cutmix=1.0,
                 smoothing=0.1, probe_layers="last6"),
    "aimv2": dict(lr_grid=[5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3], weight_decay=[0.05, 0.1], mixup=0.0,
                  cutmix=0.0, smoothing=0.0, probe_layers="last1"),
}
GRID_BATCH = 1024  # the batch the grid's lrs are given at

logger = logging.getLogger("cls.attnprobe")  # by name: run with -m, __name__ is __main__


def parse_args(argv=None):
    ap = base_parser(__doc__, batch_size=128, no_device_form="the attentive probe's timm augmentation (color "
                     "jitter, RandAugment), mixup and cutmix have no device form here")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="xtra",
                    help="the published recipe the grid, augmentation and probed blocks default to (see above); "
                         "a flag given beside it wins")
    ap.add_argument("--epochs", type=int, default=100, help="training epochs")
    ap.add_argument("--warmup-epochs", type=int, default=5, help="linear warm-up epochs (per-iteration schedule)")
    ap.add_argument("--lr-grid", type=positive_float, nargs="+",
                    help=f"peak lrs at batch {GRID_BATCH} (scaled by effective batch / {GRID_BATCH}); one head per "
                         "lr x weight decay")
    ap.add_argument("--min-lr", type=float, default=1e-5, help="floor of the cosine schedule")
    ap.add_argument("--weight-decay", type=non_negative_float, nargs="+",
                    help="AdamW weight decays (every head parameter); one head per lr x weight decay")
    ap.add_argument("--clip-grad", type=float, default=3.0, help="gradient-norm clipping, per head")
    ap.add_argument("--probe-layers",
                    help="the blocks whose patch tokens the head reads, averaged: last6, last1, mid6, lastN, midN, "
                         "or 0-based block indices, comma-separated (12,13,14)")
    ap.add_argument("--color-jitter", type=float, default=0.3,
                    help="color jitter (timm applies it only without --randaug, as for DeiT's and AIM's listing)")
    ap.add_argument("--randaug", default="rand-m9-mstd0.5-inc1", help="timm auto-augment string ('' for none)")
    ap.add_argument("--mixup", type=float, help="mixup alpha (0: off)")
    ap.add_argument("--cutmix", type=float, help="cutmix alpha (0: off)")
    ap.add_argument("--smoothing", type=float, help="label smoothing")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="autocast dtype")
    args = ap.parse_args(argv)
    for key, value in PRESETS[args.preset].items():  # the preset fills what was not given
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def probe_blocks(spec: str, depth: int) -> list[int]:
    """The 0-based indices of the blocks ``--probe-layers`` names (see the module's docstring)."""
    m = re.fullmatch(r"(last|mid)(\d+)", spec)
    if m:
        n = int(m.group(2))
        first = depth - n if m.group(1) == "last" else depth // 2
        blocks = list(range(first, first + n))
    elif re.fullmatch(r"\d+(,\d+)+|\d+,", spec):  # a comma even for one block: a lone 6 meant "the last 6" once
        blocks = sorted(int(i) for i in spec.strip(",").split(","))
    else:
        raise SettingError(f"--probe-layers {spec}: give last6, last1, mid6, lastN, midN or block indices "
                           "separated by commas (12,13,14; one block: 6,)")
    if not blocks or blocks[0] < 0 or blocks[-1] >= depth or len(set(blocks)) != len(blocks):
        raise SettingError(f"--probe-layers {spec}: blocks {blocks} do not fit an encoder of {depth} blocks "
                           f"(0 to {depth - 1}, each once)")
    return blocks


class AttentionPoolingHead(torch.nn.Module):
    """AIM's attentive head: one learnable query cross-attends to the normalized tokens."""

    def __init__(self, dim: int, num_classes: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.bn = torch.nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.query = torch.nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.k = torch.nn.Linear(dim, dim, bias=False)
        self.v = torch.nn.Linear(dim, dim, bias=False)
        self.linear = torch.nn.Linear(dim, num_classes, bias=False)
        for layer in (self.k, self.v, self.linear):
            torch.nn.init.xavier_uniform_(layer.weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, _, c = tokens.shape
        x = self.bn(tokens.transpose(1, 2)).transpose(1, 2)
        heads = (b, -1, self.num_heads, c // self.num_heads)
        q = self.query.expand(b, -1, -1).reshape(heads).transpose(1, 2)
        k, v = (proj(x).reshape(heads).transpose(1, 2) for proj in (self.k, self.v))
        pooled = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, c).mean(1)
        return self.linear(pooled)


class AttentiveProbe(torch.nn.Module):
    """A frozen timm ViT and ``grid`` ``AttentionPoolingHead``s (one per lr); returns (heads, batch, classes)."""

    def __init__(self, encoder: torch.nn.Module, num_classes: int, grid: int, blocks: list[int]):
        super().__init__()
        self.encoder, self.blocks = encoder.requires_grad_(False), blocks
        head = AttentionPoolingHead(encoder.embed_dim, num_classes, encoder.blocks[0].attn.num_heads)
        self.heads = torch.nn.ModuleList(copy.deepcopy(head) for _ in range(grid))  # one initial draw

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen: no drop path, as a feature extractor
        return self

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The patch tokens (no [CLS]) averaged over ``blocks``, before the final norm."""
        blocks = self.encoder.forward_intermediates(images, indices=self.blocks, norm=False, output_fmt="NLC",
                                                    intermediates_only=True)
        return torch.stack(blocks).mean(0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.features(images)
        return torch.stack([head(tokens) for head in self.heads])


class SummedHeadLoss(torch.nn.Module):
    """The sum of each head's loss: each head gets exactly the gradient of its own loss."""

    def __init__(self, criterion: torch.nn.Module):
        super().__init__()
        self.criterion = criterion

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.criterion(head, target) for head in logits)


def transforms_for(args):
    train = create_transform(args.img_size, is_training=True, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5,
                             color_jitter=args.color_jitter, auto_augment=args.randaug or None,
                             interpolation="bicubic", re_prob=0.0)
    return train, eval_transform(args.img_size)


def grid(args) -> list[dict]:
    """The heads' settings: every lr with every weight decay, lr first."""
    return [dict(lr=lr, weight_decay=wd) for lr in args.lr_grid for wd in args.weight_decay]


def model_and_optimizer(args, num_classes: int, world: int = 1):
    """The probe, and AdamW with one parameter group per head, at its lr and weight decay of the grid."""
    encoder = timm_vit_from_encoder(args.encoder, img_size=args.img_size, num_classes=0)
    settings = grid(args)
    model = AttentiveProbe(encoder, num_classes, len(settings), probe_blocks(args.probe_layers, len(encoder.blocks)))
    scale = args.batch_size * world / GRID_BATCH
    groups = [dict(params=list(head.parameters()), lr=s["lr"] * scale, weight_decay=s["weight_decay"])
              for head, s in zip(model.heads, settings)]
    return model, torch.optim.AdamW(groups, betas=(0.9, 0.999))


def main(argv=None):
    args = parse_args(argv)
    start(args, check_encoder=lambda meta: probe_blocks(args.probe_layers, meta["depth"]))
    train_set, val_set = image_folders(args.data, *transforms_for(args), args.fit_images)
    classes = len(train_set.classes)
    model, optimizer = model_and_optimizer(args, classes, world_size())
    mixup, criterion = mixup_and_criterion(args, classes)
    trainer = EpochTrainer(args, model, train_set, val_set, optimizer, SummedHeadLoss(criterion), mixup,
                           clip_groups=[g["params"] for g in optimizer.param_groups])  # a head per group
    result = trainer.fit("attnprobe", grid=grid(args), preset=args.preset, probe_layers=args.probe_layers,
                         probe_blocks=model.blocks)
    if trainer.rank == 0:
        for setting, top1 in zip(result["grid"], result["head_top1"]):
            logger.info(f"  lr {setting['lr']:g} (at batch {GRID_BATCH}), weight decay {setting['weight_decay']:g}: "
                        f"top-1 {top1:.2f}")
    return result


if __name__ == "__main__":
    command(main)()
