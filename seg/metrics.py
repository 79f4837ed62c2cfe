"""The seg evaluators, writing their results with provenance to the JSON file the results tool
reads: mIoU with the per-class table (``seg_metrics.json``), depth errors (``depth_metrics.json``)."""
from __future__ import annotations

import math

import numpy as np
from mmengine.logging import MessageHub
from mmseg.evaluation import DepthMetric, IoUMetric
from mmseg.registry import METRICS

from semaim_core.provenance import provenance, write_metrics


class JsonRecord:
    """With ``json_file`` set (seg/tools set it in the work dir), a metric's summary is also written
    there with its provenance: the scored checkpoint (or the run's in-training model), iteration,
    dataset, number of images, config and suite commit. A file holding another checkpoint's result
    is replaced only with ``overwrite``; ``protocol`` (seg/tools: frozen linear or fine-tuned, and
    the blocks read) goes into the record."""

    def __init__(self, json_file: str | None = None, provenance: dict | None = None, overwrite: bool = False,
                 protocol: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.json_file, self.source, self.overwrite = json_file, provenance or {}, overwrite
        self.protocol = protocol or {}

    def write_record(self, record: dict, images: int):
        if not self.json_file:
            return
        iteration = MessageHub.get_current_instance().get_info("iter")
        record = dict(record, **self.protocol)
        record["provenance"] = provenance(
            self.source.get("checkpoint"), run=self.source.get("run"), config=self.source.get("config"),
            iteration=None if self.source.get("checkpoint") else (iteration or 0) + 1,
            dataset=self.source.get("dataset"), images=images)
        write_metrics(self.json_file, record, self.overwrite)


@METRICS.register_module()
class SemAIMIoUMetric(JsonRecord, IoUMetric):
    """mmseg's ``IoUMetric``; its file holds aAcc, mIoU, mAcc and per-class IoU / Acc (percent, null
    for classes absent from both prediction and ground truth)."""

    def compute_metrics(self, results: list) -> dict:
        summary = super().compute_metrics(results)
        inter, union, pred, label = (sum(r[i] for r in results) for i in range(4))
        per = self.total_area_to_metrics(inter, union, pred, label, ["mIoU"], self.nan_to_num, self.beta)

        def pct(x):
            x = float(x)
            return None if math.isnan(x) else round(100 * x, 2)

        self.write_record(dict(task="seg", **{k: round(float(v), 2) for k, v in summary.items()}, per_class={
            name: dict(IoU=pct(i), Acc=pct(a))
            for name, i, a in zip(self.dataset_meta["classes"], np.asarray(per["IoU"]), np.asarray(per["Acc"]))}),
            len(results))
        return summary


@METRICS.register_module()
class SemAIMDepthMetric(JsonRecord, DepthMetric):
    """mmseg's ``DepthMetric`` (each image's errors over its evaluated pixels, averaged over the
    images, as the Monocular-Depth-Estimation-Toolbox that DINOv2 evaluated with); its file holds
    every error, RMSE and the others in metres or as ratios, the delta accuracies in percent."""

    def compute_metrics(self, results: list) -> dict:
        summary = super().compute_metrics(results)
        record = {k: round(100 * v, 2) if k in ("d1", "d2", "d3") else round(v, 4) for k, v in summary.items()}
        self.write_record(dict(task="depth", **record), len(results))
        return summary
