#!/usr/bin/env python
"""Loss curves side by side: an opt-in speed mode against the recipe it departs from, or any runs.

    python tools/compare_loss_curves.py runs/bf16 runs/fp8 --plot loss.png

Reads each run directory's metrics.jsonl (one schema, written by every trainer of the suite:
pretraining, cls, det, seg) and, for pretraining runs, config.json. Prints,
per run, the recipe settings in which it differs from the first run, the steps it logged, its mean
loss over the first and the last --window logged steps and, for every run after the first, its
loss relative to the first run's at the steps both logged (mean and largest gap, and the gap over
the last window). The runs should share data, seed and schedule, so that the curves differ only by
the settings printed. The exit status is 1 when a run has no metrics or two runs share no step.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from semaim_core.errors import HelpFormatter, command
from semaim_core.recipe import OPERATIONAL, STOPPING


def read_run(run: Path) -> tuple[dict[int, float], dict]:
    """({step: loss}, config) of one run directory of any of the suite's trainers."""
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics} does not exist: pass a run directory of one of the suite's trainers "
                                "(pretraining, cls, det, seg)")
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    return {r["step"]: r["loss"] for r in rows}, config


def recipe_difference(config: dict, reference: dict) -> dict:
    """{setting: (reference value, this run's value)} for the settings in which two recipes differ."""
    keys = (set(config) | set(reference)) - set(OPERATIONAL) - set(STOPPING)
    return {k: (reference.get(k), config.get(k)) for k in sorted(keys) if config.get(k) != reference.get(k)}


def compare(curves: dict[str, dict[int, float]], window: int) -> dict[str, dict]:
    """Per run: steps, mean loss over the first and last ``window`` logged steps and, after the first
    run, the relative gap (this run / the first run - 1) at the shared steps."""
    names = list(curves)
    reference = curves[names[0]]
    summary = {}
    for name in names:
        curve = curves[name]
        steps = sorted(curve)
        if not steps:
            raise ValueError(f"{name}: metrics.jsonl has no logged step")
        row = dict(steps=len(steps), last_step=steps[-1], first=_mean(curve, steps[:window]),
                   last=_mean(curve, steps[-window:]))
        if name != names[0]:
            shared = sorted(set(steps) & set(reference))
            if not shared:
                raise ValueError(f"{name} and {names[0]} share no logged step: compare runs of the same schedule")
            gaps = [curve[s] / reference[s] - 1 for s in shared]
            tail = shared[-window:]
            row.update(shared_steps=len(shared), mean_gap=sum(gaps) / len(gaps), max_gap=max(gaps, key=abs),
                       last_gap=_mean(curve, tail) / _mean(reference, tail) - 1)
        summary[name] = row
    return summary


def _mean(curve: dict[int, float], steps: list[int]) -> float:
    return sum(curve[s] for s in steps) / len(steps)


def plot(curves: dict[str, dict[int, float]], path: Path) -> Path:
    from tools.lib.figures import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(7, 4))
    for name, curve in curves.items():
        steps = sorted(curve)
        ax.plot(steps, [curve[s] for s in steps], label=name, linewidth=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("pretraining loss")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run directories; the first is the reference")
    ap.add_argument("--window", type=int, default=20, help="logged steps averaged at the start and at the end")
    ap.add_argument("--plot", type=Path, help="also draw the curves (PNG)")
    args = ap.parse_args(argv)
    try:
        runs = {str(run): read_run(run) for run in args.runs}
        curves = {name: curve for name, (curve, _) in runs.items()}
        summary = compare(curves, args.window)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    reference_name = str(args.runs[0])
    reference_config = runs[reference_name][1]
    for name, row in summary.items():
        config = runs[name][1]
        print(f"{name}: {row['steps']} logged steps to step {row['last_step']} "
              f"(data {config.get('data', '?')}, model {config.get('model', '?')})")
        if name == reference_name:
            print("  the reference")
        else:
            diff = recipe_difference(config, reference_config)
            print("  differs from the reference in: " + (", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
                                                      or "nothing (same recipe)"))
        print(f"  mean loss, first {args.window} logged steps {row['first']:.4f}, last {args.window} {row['last']:.4f}")
        if "mean_gap" in row:
            print(f"  loss / reference - 1 at {row['shared_steps']} shared steps: mean {100 * row['mean_gap']:+.2f}%, "
                  f"largest {100 * row['max_gap']:+.2f}%, over the last {args.window} logged steps "
                  f"{100 * row['last_gap']:+.2f}%")
    if args.plot:
        print(f"wrote {plot(curves, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(command(main)())
