"""Evaluation results as a JSON file the results tool reads."""
from __future__ import annotations

import math
import os

from semaim_core.provenance import check_replaceable, provenance, result_source
from semaim_core.provenance import write_metrics as write_record


def _finite_or_none(d: dict) -> dict:
    """COCOEvaluator reports NaN when there is nothing to score; JSON has no NaN."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def check_writable(output_dir: str, checkpoint: str | None = None, overwrite: bool = False):
    """Before an evaluation: refuse now, not after inference, what ``write_metrics`` would refuse."""
    source = result_source(checkpoint, run=os.path.abspath(output_dir))
    check_replaceable(os.path.join(output_dir, "det_metrics.json"), source, overwrite)


def write_metrics(results: dict, output_dir: str, iteration: int, dataset: str, checkpoint: str | None = None,
                  images: int | None = None, config: str | None = None, overwrite: bool = False) -> str:
    """``det_metrics.json``: box and mask AP (AP, AP50, AP75, APs/m/l and AP-<class>) as
    detectron2's COCOEvaluator reports them (percent; null where nothing could be scored), with
    their provenance (the scored checkpoint, or this run's in-training model at ``iteration``)."""
    record = {"task": "det", "dataset": dataset, "iteration": iteration,
              "bbox": _finite_or_none(results.get("bbox", {})), "segm": _finite_or_none(results.get("segm", {})),
              "provenance": provenance(checkpoint, run=os.path.abspath(output_dir), iteration=iteration,
                                       dataset=dataset, images=images, config=config)}
    return str(write_record(os.path.join(output_dir, "det_metrics.json"), record, overwrite))
