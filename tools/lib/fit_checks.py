"""The fit checks' pass marks, in one place for tests/test_fit_checks.py and the demo's evidence.

A fit check trains a downstream model on a handful of training images and scores it on the same
images: a working pipeline fits them, a broken one (wrong labels, weights that did not load, no
gradient reaching the model) cannot. Each mark sits well above what a model that learned nothing
scores, and a working pipeline clears it from a random-init encoder and from the demo's encoder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

CLS_TOP1, CLS_MAJORITY_MAX = 75.0, 25.0  # top-1 on the 16 crops; the crops' most frequent class at most
SEG_AACC_OVER_MAJORITY, SEG_MIOU_TIMES_MAJORITY = 8.0, 2.0
DET_BOX_AP50, DET_MASK_AP = 30.0, 12.0
SEG_FIT_MAPS = 4  # the seg fit config's ``indices``: the first 4 training maps
DEPTH_RMSE_TIMES_CONSTANT, DEPTH_D1 = 0.5, 75.0  # RMSE at most half the best constant's; delta1 (%)


def first_maps(maps_dir: str | Path, count: int, what: str, check: str) -> list[Path]:
    """The first ``count`` PNG maps of ``maps_dir`` (a fit check's images), or an error saying how to make them."""
    maps = sorted(Path(maps_dir).glob("*.png"))[:count]
    if len(maps) < count:
        raise FileNotFoundError(f"{maps_dir}: {len(maps)} {what}, the {check} fit check needs {count} "
                                "(derive them: make data)")
    return maps


def seg_majority(maps_dir: str | Path, count: int = SEG_FIT_MAPS) -> tuple[float, float]:
    """(aAcc, mIoU) of always answering the most frequent class on the first ``count`` maps."""
    maps = first_maps(maps_dir, count, "label maps", "seg")
    from PIL import Image

    labels = np.concatenate([np.asarray(Image.open(f)).ravel() for f in maps])
    counts = np.bincount(labels[labels != 255])
    acc = 100 * counts.max() / counts.sum()
    return float(acc), float(acc / np.count_nonzero(counts))


def cls_failure(metrics: dict) -> str | None:
    """Why a cls fit check's ``cls_metrics.json`` fails its mark, or None when it passes."""
    if metrics["majority_top1"] > CLS_MAJORITY_MAX:
        return f"the crops' most frequent class is {metrics['majority_top1']:.1f}% (> {CLS_MAJORITY_MAX:g}%)"
    if metrics["top1"] < CLS_TOP1:
        return f"top-1 {metrics['top1']:.1f} < {CLS_TOP1:g}"
    return None


def seg_failure(metrics: dict, majority: tuple[float, float]) -> str | None:
    """Why a seg fit check's ``seg_metrics.json`` fails, beside ``seg_majority`` of its maps."""
    acc, miou = majority
    if metrics["aAcc"] < acc + SEG_AACC_OVER_MAJORITY:
        return f"aAcc {metrics['aAcc']:.1f} < the majority class's {acc:.1f} + {SEG_AACC_OVER_MAJORITY:g}"
    if metrics["mIoU"] < SEG_MIOU_TIMES_MAJORITY * miou:
        return f"mIoU {metrics['mIoU']:.1f} < {SEG_MIOU_TIMES_MAJORITY:g} x the majority class's {miou:.1f}"
    return None


def det_failure(metrics: dict) -> str | None:
    """Why a det fit check's ``det_metrics.json`` fails its mark, or None when it passes."""
    if metrics["bbox"]["AP50"] < DET_BOX_AP50:
        return f"box AP50 {metrics['bbox']['AP50']:.1f} < {DET_BOX_AP50:g}"
    if metrics["segm"]["AP"] < DET_MASK_AP:
        return f"mask AP {metrics['segm']['AP']:.1f} < {DET_MASK_AP:g}"
    return None


def depth_constant(maps_dir: str | Path, count: int = SEG_FIT_MAPS) -> float:
    """RMSE (m) of the best constant prediction, the mean depth, over the first ``count`` depth maps
    (16-bit PNGs in millimetres)."""
    maps = first_maps(maps_dir, count, "depth maps", "depth")
    from PIL import Image

    depth = np.concatenate([np.asarray(Image.open(f), dtype=np.float64).ravel() / 1000 for f in maps])
    return float(depth.std())


def depth_failure(metrics: dict, constant_rmse: float) -> str | None:
    """Why a depth fit check's ``depth_metrics.json`` fails, beside ``depth_constant`` of its maps."""
    if metrics["rmse"] > DEPTH_RMSE_TIMES_CONSTANT * constant_rmse:
        return (f"RMSE {metrics['rmse']:.3f} m > {DEPTH_RMSE_TIMES_CONSTANT:g} x the best constant's "
                f"{constant_rmse:.3f} m")
    if metrics["d1"] < DEPTH_D1:
        return f"delta1 {metrics['d1']:.1f} % < {DEPTH_D1:g} %"
    return None
