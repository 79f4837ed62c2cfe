#!/usr/bin/env python
"""Weighted k-NN classification (DINO's protocol) on frozen, L2-normalized features: by default
the mean of the patch tokens + a LayerNorm without affine, as the authors' README runs main_knn.py
(--global_pool); --pool cls takes the normalized [CLS]. Resize 256 + CenterCrop 224.

One feature extraction scores every k and temperature asked for: by default DINO's k list (10, 20,
100, 200) times T 0.07 (DINO's) and 0.1, 0.2 (the efficient-probing leaderboard's). The first k and
the first T are the headline, the number the tables show: k 20, T 0.07, DINO's default.

    python -m cls.knn --data /data/imagenet --encoder runs/semaim_b/encoder.pth --output-dir runs/knn_semaim_b
"""
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cls.backbone import timm_vit_from_encoder
from cls.data import image_folders, loader
from cls.engine import base_parser, majority_top1, scored_folder, start, write_metrics
from semaim_core.data import eval_transform
from semaim_core.errors import command, positive_float, positive_int
from semaim_core.knn import knn_sweep
from semaim_core.rundir import release_lock


@torch.no_grad()
def features(model, dataset, batch_size, workers, device, kind="torch"):
    feats, labels = [], []
    for images, target in tqdm(loader(dataset, batch_size, workers, 1, 0, False, 0, False, kind, device),
                               desc="features", dynamic_ncols=True):
        out = model(images.to(device)).float()  # num_classes=0: the pooled feature
        if not torch.isfinite(out).all():  # NaN similarities would silently vote for one class
            raise FloatingPointError(f"the encoder gives non-finite features for {dataset.root}: its weights hold a "
                                     "NaN or inf (a diverged run?); use an earlier checkpoint's export")
        feats.append(F.normalize(out, dim=1))
        labels.append(target.to(device))
    return torch.cat(feats), torch.cat(labels)

logger = logging.getLogger("cls.knn")


KS = (20, 10, 100, 200)  # DINO's eval_knn.py --nb_knn; its default, 20, first: the headline
TEMPERATURES = (0.07, 0.1, 0.2)  # DINO's 0.07 first, then the efficient-probing leaderboard's sweep


def parse_args(argv=None):
    ap = base_parser(__doc__, trains=False)
    ap.add_argument("--k", type=positive_int, nargs="+", default=list(KS),
                    help="neighbours that vote, each scored; the first is the headline")
    ap.add_argument("--temperature", type=positive_float, nargs="+", default=list(TEMPERATURES),
                    help="vote weight exp(cos / T), each scored; the first is the headline")
    ap.add_argument("--pool", choices=["avg", "cls"], default="avg",
                    help="avg: mean of the patch tokens + LayerNorm without affine (the authors'); "
                         "cls: the normalized [CLS]")
    return ap.parse_args(argv)


def feature_model(args):
    """The frozen encoder as a timm ViT whose output is the pooled feature. With avg pooling timm's
    fc_norm stays at its initialization (weight 1, bias 0): a LayerNorm without affine."""
    pool = "avg" if args.pool == "avg" else "token"
    return timm_vit_from_encoder(args.encoder, img_size=args.img_size, num_classes=0, global_pool=pool)


def main(argv=None):
    args = parse_args(argv)
    start(args)
    device = torch.device(args.device)
    train_set, val_set = image_folders(args.data, eval_transform(args.img_size), eval_transform(args.img_size),
                                       args.fit_images)  # a fit check: the memory bank is the images scored
    model = feature_model(args).to(device).eval()
    train_f, train_y = features(model, train_set, args.batch_size, args.num_workers, device, args.loader)
    val_f, val_y = features(model, val_set, args.batch_size, args.num_workers, device, args.loader)
    sweep = knn_sweep(train_f, train_y, val_f, val_y, len(train_set.classes), args.k, args.temperature)
    headline = sweep[0]  # the first k and T
    result = dict(task="cls", mode="knn", **headline, pool=args.pool,
                  majority_top1=majority_top1(train_set, val_set), encoder=str(args.encoder), data=str(args.data),
                  memory_bank=len(train_set), sweep=sweep)
    path = write_metrics(args, result, epoch=None, images=len(val_set))
    release_lock(Path(args.output_dir))
    for row in sweep:
        logger.info(f"k-NN k {row['k']} T {row['temperature']}: top-1 {row['top1']:.2f}  top-5 {row['top5']:.2f}")
    logger.info(f"k-NN top-1 {headline['top1']:.2f} (k {headline['k']}, T {headline['temperature']}) on "
                f"{len(val_set)} images of {scored_folder(args)} (always answering the most frequent class: "
                f"{result['majority_top1']:.2f}) -> {path}")
    return result


if __name__ == "__main__":
    command(main)()
