#!/usr/bin/env python
"""What the demo's runs show about learning, beside the numbers a model that learned nothing gets.

    python tools/learning_evidence.py runs/demo_suite
    DEMO_README=1 make demo      # the demo's last stage, with --readme README.md

Reads the demo's run directories (pretrain/, cls_*/, fit_*/): the pretraining loss at its start and
end, each top-1 beside the majority-class baseline, and the fit checks (each downstream model
trained on a handful of images and scored on the same images, which a broken pipeline cannot fit).
A fit check below its pass mark (tools/lib/fit_checks.py, the marks tests/test_fit_checks.py
uses) is a FAILED line, not evidence. Writes the lines and their provenance (commit, date, torch
threads, wall time) to OUT/evidence.json. --readme puts a full run's lines into README.md's demo
block. The exit status is 1 when a run is missing or a fit check fails.
"""
import argparse
import json
import re
import sys
import time
from pathlib import Path

from semaim_core.errors import HelpFormatter, command
from semaim_core.provenance import suite_commit
from semaim_core.safe_io import write_json_atomic
from tools.lib.fit_checks import cls_failure, depth_constant, depth_failure, det_failure, seg_failure, seg_majority

RECORD = "docs/demo_evidence.json"  # beside README.md: the full run its demo block shows
README_BLOCK = re.compile(r"(<!-- demo-evidence: begin.*?-->\n)(.*?)(<!-- demo-evidence: end -->)", re.S)


def _json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _fit_line(what: str, failure: str | None) -> str:
    return f"{what}  FAILED: {failure}" if failure else what


def run_threads(out: Path) -> list[int]:
    """The torch thread counts the demo's runs recorded in their metrics files."""
    files = [*out.glob("*/*_metrics.json")]
    return sorted({(_json(f).get("provenance") or {}).get("torch_threads") for f in files} - {None})


def pretraining_rows(out: Path) -> list[dict]:
    path = out / "pretrain" / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def plot_pretraining(rows: list[dict], path: Path) -> Path:
    """The pretraining loss beside the monitor's k-NN top-1 and RankMe, step by step."""
    from tools.lib.figures import pyplot, save_figure

    watched = [r for r in rows if "monitor_knn_top1" in r]
    fig, (loss, knn) = pyplot().subplots(1, 2, figsize=(9, 3.2))
    loss.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="tab:blue")
    loss.set(xlabel="step", ylabel="loss", title="pretraining loss")
    steps = [r["step"] for r in watched]
    knn.plot(steps, [r["monitor_knn_top1"] for r in watched], "o-", color="tab:green")
    knn.set(xlabel="step", title="the encoder while it trains (--monitor)")
    knn.set_ylabel("k-NN top-1 (%)", color="tab:green")
    rank = knn.twinx()
    rank.plot(steps, [r["monitor_rankme"] for r in watched], "s--", color="tab:purple")
    rank.set_ylabel("RankMe", color="tab:purple")
    fig.tight_layout()
    return save_figure(fig, path)


def evidence(out: Path, data: Path) -> tuple[list[str], list[str], dict]:
    """(the evidence lines, the problems: missing runs and failed fit checks, the fit checks' scores)."""
    lines, problems, scores = [], [], {}
    rows = pretraining_rows(out)
    if len(rows) >= 2:
        k = max(1, len(rows) // 5)
        first, last = (sum(r["loss"] for r in part) / len(part) for part in (rows[:k], rows[-k:]))
        lines.append(f"pretraining loss (50 tiny_coco train images): {first:.3f} over the first {k} steps -> "
                     f"{last:.3f} over the last {k} ({100 * (last - first) / first:+.1f}%)")
    else:
        problems.append(f"{out}/pretrain/metrics.jsonl: fewer than 2 logged steps")
    watched = [r for r in rows if "monitor_knn_top1" in r]
    if watched:
        a, b = watched[0], watched[-1]
        lines.append(f"while pretraining (--monitor, k-NN on the crops): top-1 {a['monitor_knn_top1']:.1f} at step "
                     f"{a['step']} -> {b['monitor_knn_top1']:.1f} at step {b['step']}; RankMe "
                     f"{a['monitor_rankme']:.1f} -> {b['monitor_rankme']:.1f}")
    for name, what in (("cls_ft", "fine-tuning"), ("cls_lin", "linear probe"), ("cls_attn", "attentive probe"),
                       ("cls_knn", "k-NN")):
        m = _json(out / name / "cls_metrics.json")
        if m is None:
            problems.append(f"{name}: not run")
            continue
        images = (m.get("provenance") or {}).get("images")
        lines.append(f"{what}: top-1 {m['top1']:.1f} on {images} images; always the most frequent class: "
                     f"{m['majority_top1']:.1f}")
    checks = []
    m = _json(out / "fit_cls" / "cls_metrics.json")
    if m:
        scores["cls"] = {k: m[k] for k in ("top1", "majority_top1")}
        checks.append((f"fit check: fine-tuning on 16 train crops, scored on them: top-1 {m['top1']:.1f}; always "
                       f"the most frequent class: {m['majority_top1']:.1f}", cls_failure(m)))
    m = _json(out / "fit_seg" / "seg_metrics.json")
    if m:
        majority = seg_majority(data / "coco_stuff" / "annotations" / "train2017")
        scores["seg"] = dict(aAcc=m["aAcc"], mIoU=m["mIoU"], majority=majority)
        checks.append((f"fit check: UperNet on 4 train maps, scored on them: aAcc {m['aAcc']:.1f}, mIoU "
                       f"{m['mIoU']:.1f}; always the most frequent class: {majority[0]:.1f}, {majority[1]:.1f}",
                       seg_failure(m, majority)))
    m = _json(out / "fit_depth" / "depth_metrics.json")
    if m:
        constant = depth_constant(data / "depth_scenes" / "annotations" / "train")
        scores["depth"] = dict(rmse=m["rmse"], d1=m["d1"], constant_rmse=constant)
        checks.append((f"fit check: linear depth head on the frozen encoder, 4 scenes of known depth, scored on "
                       f"them: RMSE {m['rmse']:.2f} m, delta1 {m['d1']:.1f} %; the best constant: RMSE "
                       f"{constant:.2f} m", depth_failure(m, constant)))
    m = _json(out / "fit_det" / "det_metrics.json")
    if m:
        scores["det"] = dict(bbox=dict(AP50=m["bbox"]["AP50"]), segm=dict(AP=m["segm"]["AP"]))
        checks.append((f"fit check: Mask R-CNN on 4 train images, scored on them: box AP50 {m['bbox']['AP50']:.1f}, "
                       f"mask AP {m['segm']['AP']:.1f}", det_failure(m)))
    for what, failure in checks:
        lines.append(_fit_line(what, failure))
        if failure:
            problems.append(f"fit check failed: {what.split(': ')[1]}: {failure}")
    if not checks:
        problems.append("no fit check ran (fit_cls, fit_seg, fit_depth, fit_det)")
    return lines, problems, scores


def readme_block(record: dict) -> str:
    """The README's demo block for an evidence record."""
    minutes, seconds = divmod(round(record["wall_seconds"]), 60)
    return (f"`make demo` on {record['date']}, commit {record['commit'][:7]}, "
            f"{'/'.join(map(str, record['threads']))} torch threads, "
            f"{minutes} min {seconds:02d} s:\n\n```\n" + "\n".join(record["lines"]) + "\n```\n")


def update_readme(readme: Path, record: dict) -> None:
    """Put ``record``'s block into ``readme`` and the record beside it (docs/demo_evidence.json),
    where tests/test_demo_and_tables.py holds the two to each other and to the pass marks."""
    if record["quick"] or record["problems"]:
        raise SystemExit(f"--readme: only a full demo run without problems goes into {readme} "
                         f"(quick: {record['quick']}, problems: {record['problems']})")
    text = readme.read_text()
    if not README_BLOCK.search(text):
        raise SystemExit(f"{readme}: no '<!-- demo-evidence: begin -->' ... '<!-- demo-evidence: end -->' block")
    readme.write_text(README_BLOCK.sub(lambda m: m.group(1) + readme_block(record) + m.group(3), text))
    write_json_atomic(readme.parent / RECORD, record)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("out", type=Path, help="the demo's output folder (DEMO_OUT)")
    ap.add_argument("--data", type=Path, default=Path("data/derived"), help="the derived data the fit checks used")
    ap.add_argument("--started", type=float, help="the demo's start (seconds since the epoch), for its wall time")
    ap.add_argument("--quick", action="store_true", help="the run was DEMO_QUICK=1 (recorded)")
    ap.add_argument("--readme", type=Path, help="put the lines into this README's demo block")
    args = ap.parse_args(argv)
    lines, problems, scores = evidence(args.out, args.data)
    record = dict(lines=lines, problems=problems, fit_checks=scores, quick=args.quick, commit=suite_commit(),
                  date=time.strftime("%Y-%m-%d"), threads=run_threads(args.out),
                  wall_seconds=time.time() - args.started if args.started else None)
    write_json_atomic(args.out / "evidence.json", record)
    rows = pretraining_rows(args.out)
    if any("monitor_knn_top1" in r for r in rows):
        print(f"wrote {plot_pretraining(rows, args.out / 'pretraining.png')}")
    print("Evidence of learning:\n" + "\n".join(f"  {line}" for line in lines))
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    if args.readme:
        update_readme(args.readme, record)
        print(f"wrote the demo block of {args.readme}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(command(main)())
