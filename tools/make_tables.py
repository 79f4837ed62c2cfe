#!/usr/bin/env python
"""Results tables from run directories, with the published reference rows beside them.

    python tools/make_tables.py --row "SemAIM-B 800ep (ours)" runs/semaim_b output/vitdet_semaim_b \
        work_dirs/upernet_semaim_b runs/ft_semaim_b --format md --plot results.png
    python tools/make_tables.py --ablation --row raster runs/raster runs/ft_raster --row semantic runs/sem runs/ft_sem

Each --row is a name and the directories of one encoder's runs (pretraining, det, seg, cls).
Every column names the dataset its numbers come from. Several runs of one task in a row are seeds:
their cell is the mean ± sample std (n) when their recipes (run.json) differ in the seed alone and
each was scored at the same iteration or epoch; otherwise the cell stays empty and says why (two
recipes, the same seed twice, or a run scored half-way, e.g. one that died after a periodic evaluation).
Problems with any run (missing folder, malformed or unknown metric files, values that are not
numbers, files without provenance) are listed and flagged in the table ('?' no provenance, '!' not
a score); the exit status is then 1, so a script notices. --provenance prints where each cell came
from (checkpoint and hash, iteration, dataset size, suite commit).
"""
import argparse
import sys

from semaim_core.errors import HelpFormatter, command
from tools.lib.results import ablation, collect, provenance_lines, published_rows, results_chart, table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--row", nargs="+", action="append", required=True, metavar=("NAME", "DIR"),
                    help="a row name followed by its run directories")
    ap.add_argument("--format", choices=["md", "csv", "latex"], default="md", help="table format")
    ap.add_argument("--ablation", action="store_true",
                    help="compare rows that differ in pretraining settings (every differing setting is a column)")
    ap.add_argument("--no-published", action="store_true", help="leave out the published reference rows")
    ap.add_argument("--provenance", action="store_true", help="print where each cell's number came from")
    ap.add_argument("--out", help="write the table here too")
    ap.add_argument("--plot", help="a figure of the same numbers: PNG, or a vector PDF / SVG by the suffix")
    args = ap.parse_args(argv)
    for r in args.row:
        if len(r) < 2:
            ap.error(f"--row {r[0]!r} needs at least one run directory")
    rows = collect([(r[0], r[1:]) for r in args.row])
    if args.ablation:
        text, warnings = ablation(rows, args.format)
    else:
        shown = rows if args.no_published else rows + published_rows()
        text, warnings = table(shown, args.format), []
    print(text, end="")
    if args.provenance:
        print("\nProvenance:\n" + "\n".join(provenance_lines(rows)))
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if args.plot:
        shown = rows if args.no_published or args.ablation else rows + published_rows()
        print(f"wrote {results_chart(shown, args.plot)}")
    problems = [f"{r.method}: {p}" for r in rows for p in r.problems] + warnings
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    return 1 if problems else 0


cli = command(main)  # the console script (pyproject.toml): bad input as one line, no traceback

if __name__ == "__main__":
    sys.exit(cli())
