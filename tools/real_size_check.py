#!/usr/bin/env python
"""Every production config at its real size (tools/lib/real_size.py): pretraining's base preset and
its export and conversions, the det configs at 1024 px, the seg configs at 512 px, the cls entry
points at 224 px, the ViT-L configs; one training and one evaluation step each, each step in a
process of its own with its wall time and peak memory.

    python tools/real_size_check.py --work /tmp/real_size                  # every step (CPU: ~25 min)
    python tools/real_size_check.py --work /tmp/rs --only "det train vitdet_semaim" --only "pretrain"
    python tools/real_size_check.py --work /tmp/rs --skip-large --out docs/real_size_cpu.jsonl

Prints a table (step, ok, seconds, peak GiB, what it checked) and writes it as JSON lines (--out);
exit status 1 when a step failed. A step whose input step failed or was left out is not run.
"""
import argparse
import json
import sys
from pathlib import Path

from semaim_core.errors import HelpFormatter, command
from tools.lib.real_size import derived_data, run_in_process, steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--work", required=True, help="a folder for the runs (each step's output and log)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (AMP as the configs say)")
    ap.add_argument("--threads", type=int, help="torch threads per step (default: torch's)")
    ap.add_argument("--only", action="append", default=[], metavar="TEXT",
                    help="run the steps whose name contains TEXT (repeatable), and the steps they read from")
    ap.add_argument("--skip-large", action="store_true", help="leave out the ViT-L steps")
    ap.add_argument("--reserve-gib", type=float, default=0,
                    help="memory to leave free for other work: a step that would need more than is then left "
                         "(a ViT-L detector's training step on the CPU) builds and loads only, and says so")
    ap.add_argument("--out", help="write the results here too (JSON lines)")
    args = ap.parse_args(argv)
    chosen = [s for s in steps() if not (args.skip_large and s.size == "l")]
    if args.only:
        wanted = {s.name for s in chosen if any(text in s.name for text in args.only)}
        wanted |= {name for s in chosen if s.name in wanted for name in s.inputs}
        chosen = [s for s in chosen if s.name in wanted]
    work = Path(args.work)
    derived_data(work)
    results, failed = [], set()
    for s in chosen:
        if s.inputs & failed:
            row = dict(step=s.name, ok=False, seconds=0, peak_gib=0,
                       detail=f"not run: {', '.join(sorted(s.inputs & failed))} failed")
        else:
            row = run_in_process(s.name, work, args.device, args.threads, args.reserve_gib)
        failed |= set() if row["ok"] else {s.name}
        results.append(row)
        print(f"{s.name:70s} {'ok' if row['ok'] else 'FAILED':6s} {row['seconds']:7.1f} s {row['peak_gib']:6.2f} GiB"
              f"  {row['detail']}", flush=True)
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(command(main)())
