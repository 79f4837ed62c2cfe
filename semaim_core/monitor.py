"""Watching pretraining as it runs (``--monitor TRAIN VAL``): every ``--monitor-every`` of the
schedule, the encoder's weighted k-NN top-1 (k 20, T 0.07, DINO's) on a small labelled split, two
ImageFolder trees of the same classes, and the RankMe of its features (the effective rank: a
collapse shows as a fall). The feature is the one the suite scores encoders with (``pooled_features``:
mean patch token, LayerNorm), on the evaluation crop.

Measuring must not change training: it runs in eval mode without autograd, on the main process
alone (the other ranks' next gradient all-reduce waits for it), and every random generator it
could touch is restored afterwards, so a run with the monitor ends with the weights of one without."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.datasets import ImageFolder

from .data import eval_transform
from .errors import DataError
from .knn import knn_sweep, rankme
from .training import rng_state, set_rng_state


class Monitor:
    def __init__(self, train_dir: str, val_dir: str, img_size: int, batch_size: int, device: torch.device):
        for folder in (train_dir, val_dir):
            if not Path(folder).is_dir():
                raise DataError(f"--monitor {folder}: not a folder; give two folders of class folders (a small "
                                "labelled training split, then its validation split)")
        self.train = ImageFolder(train_dir, eval_transform(img_size))
        self.val = ImageFolder(val_dir, eval_transform(img_size))
        if self.train.classes != self.val.classes:
            raise DataError(f"--monitor: {train_dir} and {val_dir} hold different classes "
                            f"({len(self.train.classes)} vs {len(self.val.classes)})")
        self.batch_size, self.device = batch_size, device

    @staticmethod
    def due(step: int, total: int, every: float, end: int) -> bool:
        """At every ``every`` (a fraction) of the ``total`` steps of the schedule, and at ``end``."""
        interval = max(1, round(total * every))
        return step % interval == 0 or step == end

    def features(self, model, folder: ImageFolder) -> tuple[torch.Tensor, torch.Tensor]:
        feats = []
        for first in range(0, len(folder), self.batch_size):
            images = torch.stack([folder[i][0] for i in range(first, min(first + self.batch_size, len(folder)))])
            feats.append(model.pooled_features(images.to(self.device)).float())
        return torch.cat(feats), torch.tensor(folder.targets, device=self.device)

    @torch.no_grad()
    def measure(self, model) -> dict:
        """{monitor_knn_top1, monitor_rankme} of ``model`` as it is now."""
        saved, training = rng_state(), model.training
        model.eval()
        try:
            train_f, train_y = self.features(model, self.train)
            val_f, val_y = self.features(model, self.val)
            knn = knn_sweep(F.normalize(train_f, dim=1), train_y, F.normalize(val_f, dim=1), val_y,
                            len(self.train.classes), [20], [0.07])[0]
            return dict(monitor_knn_top1=knn["top1"], monitor_rankme=round(rankme(torch.cat([train_f, val_f])), 3))
        finally:
            model.train(training)
            set_rng_state(saved)
