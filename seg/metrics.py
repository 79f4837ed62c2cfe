"""mIoU with the per-class table written to a JSON file the results tool reads."""
from __future__ import annotations

import math

import numpy as np
from mmengine.logging import MessageHub
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS

from semaim_core.provenance import provenance, write_metrics


@METRICS.register_module()
class SemAIMIoUMetric(IoUMetric):
    """mmseg's ``IoUMetric``; with ``json_file`` set (seg/tools do it: ``<work_dir>/seg_metrics.json``)
    it also writes aAcc, mIoU, mAcc and per-class IoU / Acc (percent, null for classes absent
    from both prediction and ground truth), with their provenance: the scored checkpoint (or the
    run's in-training model), iteration, dataset, number of images, config and suite commit.
    A file holding another checkpoint's result is replaced only with ``overwrite``."""

    def __init__(self, json_file: str | None = None, provenance: dict | None = None, overwrite: bool = False,
                 protocol: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.json_file, self.source, self.overwrite = json_file, provenance or {}, overwrite
        self.protocol = protocol or {}  # seg/tools: frozen linear or fine-tuned, and the blocks read

    def compute_metrics(self, results: list) -> dict:
        summary = super().compute_metrics(results)
        if self.json_file:
            inter, union, pred, label = (sum(r[i] for r in results) for i in range(4))
            per = self.total_area_to_metrics(inter, union, pred, label, ["mIoU"], self.nan_to_num, self.beta)

            def pct(x):
                x = float(x)
                return None if math.isnan(x) else round(100 * x, 2)

            iteration = MessageHub.get_current_instance().get_info("iter")
            record = dict(task="seg", **self.protocol, **{k: round(float(v), 2) for k, v in summary.items()},
                          per_class={
                name: dict(IoU=pct(i), Acc=pct(a))
                for name, i, a in zip(self.dataset_meta["classes"], np.asarray(per["IoU"]), np.asarray(per["Acc"]))})
            record["provenance"] = provenance(
                self.source.get("checkpoint"), run=self.source.get("run"), config=self.source.get("config"),
                iteration=None if self.source.get("checkpoint") else (iteration or 0) + 1,
                dataset=self.source.get("dataset"), images=len(results))
            write_metrics(self.json_file, record, self.overwrite)
        return summary
