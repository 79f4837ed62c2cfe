"""Weighted k-NN classification on L2-normalized features (DINO's vote), for cls.knn and the
pretraining monitor, and RankMe, the effective rank of a set of features."""
from __future__ import annotations

import torch


def neighbours(train_f, test_f, k: int):
    """Cosine similarity and index of each test feature's k nearest training features, nearest first
    (so the first j of them are its j nearest, for any j <= k)."""
    return (test_f @ train_f.T).topk(min(k, train_f.shape[0]), dim=1)


def votes(sim, idx, train_y, num_classes: int, k: int, temperature: float):
    """Class scores: each of the k nearest training features votes exp(cos / T) for its class."""
    out = torch.zeros(sim.shape[0], num_classes, device=sim.device)
    return out.scatter_add_(1, train_y[idx[:, :k]], (sim[:, :k] / temperature).exp())


def knn_classify(train_f, train_y, test_f, num_classes: int, k: int = 20, temperature: float = 0.07, chunk: int = 1024):
    """Class scores of every test feature (see ``votes``)."""
    return torch.cat([votes(*neighbours(train_f, test_f[i:i + chunk], k), train_y, num_classes, k, temperature)
                      for i in range(0, test_f.shape[0], chunk)])


def knn_sweep(train_f, train_y, test_f, test_y, num_classes: int, ks, temperatures, chunk: int = 1024) -> list[dict]:
    """Top-1 and top-5 (%) for every k in ``ks`` and T in ``temperatures``, in that order, from one
    nearest-neighbour search: the largest k's neighbours hold every smaller k's."""
    hits = {(k, t): [0, 0] for k in ks for t in temperatures}
    for i in range(0, test_f.shape[0], chunk):
        sim, idx = neighbours(train_f, test_f[i:i + chunk], max(ks))
        y = test_y[i:i + chunk, None]
        for (k, t), counts in hits.items():
            top = votes(sim, idx, train_y, num_classes, k, t).topk(min(5, num_classes), dim=1).indices
            counts[0] += int((top[:, :1] == y).sum())
            counts[1] += int((top == y).any(dim=1).sum())
    n = test_f.shape[0]
    return [dict(k=k, temperature=t, top1=round(100 * h1 / n, 3), top5=round(100 * h5 / n, 3))
            for (k, t), (h1, h5) in hits.items()]


def rankme(features: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., ICML 2023): exp of the entropy of the normalized singular values of
    the (N x D) feature matrix, from 1 (collapsed to one direction) to min(N, D) (every direction
    used alike)."""
    s = torch.linalg.svdvals(features.double())
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))
