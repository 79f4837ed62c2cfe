#!/usr/bin/env python
"""What the demo's runs show about learning, beside the numbers a model that learned nothing gets.

    python tools/learning_evidence.py runs/demo_suite

Reads the demo's run directories (pretrain/, cls_*/, fit_*/): the pretraining loss at its start and
end, each top-1 beside the majority-class baseline, and the fit checks (each downstream model
trained on a handful of images and scored on the same images, which a broken pipeline cannot fit).
Missing runs are reported; the exit status is 1 when something is missing or a check fails.
"""
import argparse
import json
import sys
from pathlib import Path


def _json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def evidence(out: Path) -> tuple[list[str], list[str]]:
    lines, problems = [], []
    rows = [json.loads(x) for x in (out / "pretrain" / "metrics.jsonl").read_text().splitlines()] \
        if (out / "pretrain" / "metrics.jsonl").is_file() else []
    if len(rows) >= 2:
        k = max(1, len(rows) // 5)
        first, last = (sum(r["loss"] for r in part) / len(part) for part in (rows[:k], rows[-k:]))
        lines.append(f"pretraining loss (50 tiny_coco train images): {first:.3f} over the first {k} steps -> "
                     f"{last:.3f} over the last {k} ({100 * (last - first) / first:+.1f}%)")
    else:
        problems.append(f"{out}/pretrain/metrics.jsonl: fewer than 2 logged steps")
    for name, what in (("cls_ft", "fine-tuning"), ("cls_lin", "linear probe"), ("cls_knn", "k-NN"),
                       ("fit_cls", "fit check: fine-tuning on 16 train crops, scored on them")):
        m = _json(out / name / "cls_metrics.json")
        if m is None:
            (problems if not name.startswith("fit") else lines).append(f"{name}: not run")
            continue
        images = (m.get("provenance") or {}).get("images")
        lines.append(f"{what}: top-1 {m['top1']:.1f} on {images} images; always the most frequent class: "
                     f"{m['majority_top1']:.1f}")
    seg = _json(out / "fit_seg" / "seg_metrics.json")
    if seg:
        lines.append(f"fit check: UperNet on 4 train maps, scored on them: aAcc {seg['aAcc']:.1f}, "
                     f"mIoU {seg['mIoU']:.1f}")
    det = _json(out / "fit_det" / "det_metrics.json")
    if det:
        lines.append(f"fit check: Mask R-CNN on 4 train images, scored on them: box AP50 {det['bbox']['AP50']:.1f}, "
                     f"mask AP {det['segm']['AP']:.1f}")
    return lines, problems


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the demo's output folder (DEMO_OUT)")
    args = ap.parse_args(argv)
    lines, problems = evidence(args.out)
    print("Evidence of learning:\n" + "\n".join(f"  {line}" for line in lines))
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
