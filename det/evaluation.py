"""Evaluation results as a JSON file the results tool reads."""
from __future__ import annotations

import json
import math
import os
import tempfile


def _finite_or_none(d: dict) -> dict:
    """COCOEvaluator reports NaN when there is nothing to score; JSON has no NaN."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def write_metrics(results: dict, output_dir: str, iteration: int, dataset: str) -> str:
    """``det_metrics.json``: box and mask AP (AP, AP50, AP75, APs/m/l and AP-<class>) as
    detectron2's COCOEvaluator reports them (percent; null where nothing could be scored),
    written atomically."""
    record = {"task": "det", "dataset": dataset, "iteration": iteration,
              "bbox": _finite_or_none(results.get("bbox", {})), "segm": _finite_or_none(results.get("segm", {}))}
    path = os.path.join(output_dir, "det_metrics.json")
    os.makedirs(output_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output_dir, prefix=".det_metrics.")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2, allow_nan=False)
    os.replace(tmp, path)
    return path
