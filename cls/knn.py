#!/usr/bin/env python
"""Weighted k-NN classification (DINO's protocol, k 20, T 0.07) on frozen, L2-normalized features:
by default the mean of the patch tokens + a LayerNorm without affine, as the authors' README runs
main_knn.py (--global_pool); --pool cls takes the normalized [CLS]. Resize 256 + CenterCrop 224.

    python -m cls.knn --data /data/imagenet --encoder runs/semaim_b/encoder.pth --output-dir runs/knn_semaim_b
"""
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cls.backbone import timm_vit_from_encoder
from cls.data import image_folders
from cls.engine import base_parser, majority_top1, scored_folder, start, write_metrics
from semaim_core.data import eval_transform
from semaim_core.errors import command
from semaim_core.rundir import release_lock


@torch.no_grad()
def features(model, dataset, batch_size, workers, device):
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    feats, labels = [], []
    for images, target in tqdm(loader, desc="features", dynamic_ncols=True):
        out = model(images.to(device)).float()  # num_classes=0: the pooled feature
        if not torch.isfinite(out).all():  # NaN similarities would silently vote for one class
            raise FloatingPointError(f"the encoder gives non-finite features for {dataset.root}: its weights hold a "
                                     "NaN or inf (a diverged run?); use an earlier checkpoint's export")
        feats.append(F.normalize(out, dim=1))
        labels.append(target.to(device))
    return torch.cat(feats), torch.cat(labels)

logger = logging.getLogger("cls.knn")


def knn_classify(train_f, train_y, test_f, num_classes: int, k: int = 20, temperature: float = 0.07, chunk: int = 1024):
    """Class scores: each of the k nearest training features votes exp(cos / T) for its class."""
    scores = []
    for first in range(0, test_f.shape[0], chunk):
        sim, idx = (test_f[first:first + chunk] @ train_f.T).topk(min(k, train_f.shape[0]), dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, train_y[idx], (sim / temperature).exp())
        scores.append(votes)
    return torch.cat(scores)


def parse_args(argv=None):
    ap = base_parser(__doc__, trains=False)
    ap.add_argument("--k", type=int, default=20, help="neighbours that vote")
    ap.add_argument("--temperature", type=float, default=0.07, help="vote weight exp(cos / T)")
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
    train_f, train_y = features(model, train_set, args.batch_size, args.num_workers, device)
    val_f, val_y = features(model, val_set, args.batch_size, args.num_workers, device)
    scores = knn_classify(train_f, train_y, val_f, len(train_set.classes), args.k, args.temperature)
    k5 = min(5, scores.shape[1])
    top = scores.topk(k5, dim=1).indices
    top1 = float((top[:, 0] == val_y).float().mean() * 100)
    top5 = float((top == val_y[:, None]).any(dim=1).float().mean() * 100)
    result = dict(task="cls", mode="knn", k=args.k, temperature=args.temperature, pool=args.pool, top1=round(top1, 3),
                  majority_top1=majority_top1(train_set, val_set),
                  top5=round(top5, 3), encoder=str(args.encoder), data=str(args.data))
    path = write_metrics(args, result, epoch=None, images=len(val_set))
    release_lock(Path(args.output_dir))
    logger.info(f"k-NN top-1 {top1:.2f}  top-5 {top5:.2f} on {len(val_set)} images of {scored_folder(args)} (always "
          f"answering the most frequent class: {result['majority_top1']:.2f}) -> {path}")
    return result


if __name__ == "__main__":
    command(main)()
