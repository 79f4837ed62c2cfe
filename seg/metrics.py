"""mIoU with the per-class table written to a JSON file the results tool reads."""
from __future__ import annotations

import json
import math
import os
import tempfile

import numpy as np
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS


@METRICS.register_module()
class SemAIMIoUMetric(IoUMetric):
    """mmseg's ``IoUMetric``; with ``json_file`` set (seg/tools do it: ``<work_dir>/seg_metrics.json``)
    it also writes aAcc, mIoU, mAcc and per-class IoU / Acc (percent, null for classes absent
    from both prediction and ground truth)."""

    def __init__(self, json_file: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.json_file = json_file

    def compute_metrics(self, results: list) -> dict:
        summary = super().compute_metrics(results)
        if self.json_file:
            inter, union, pred, label = (sum(r[i] for r in results) for i in range(4))
            per = self.total_area_to_metrics(inter, union, pred, label, ["mIoU"], self.nan_to_num, self.beta)
            def pct(x):
                x = float(x)
                return None if math.isnan(x) else round(100 * x, 2)
            record = dict(task="seg", **{k: round(float(v), 2) for k, v in summary.items()}, per_class={
                name: dict(IoU=pct(i), Acc=pct(a))
                for name, i, a in zip(self.dataset_meta["classes"], np.asarray(per["IoU"]), np.asarray(per["Acc"]))})
            folder = os.path.dirname(os.path.abspath(self.json_file))
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".seg_metrics.")
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, indent=2)
            os.replace(tmp, self.json_file)
        return summary
