#!/usr/bin/env python
"""Publish a pretrained encoder as a folder that timm and the Hugging Face Hub read as is.

    python tools/publish.py runs/semaim_b hub/semaim_b --results output/vitdet_semaim_b \\
        work_dirs/upernet_semaim_b runs/ft_semaim_b --dataset imagenet-1k
    python tools/publish.py --verify hub/semaim_b          # after a download, or before a push
    python tools/publish.py runs/semaim_b hub/semaim_b --push USER/semaim_b   # token: --token or HF_TOKEN

RUN_DIR is a pretraining run (its encoder.safetensors or encoder.pth, metrics.jsonl). OUT_DIR gets
model.safetensors + config.json (timm's save_for_hf: timm's key layout, num_classes 0, the
evaluation preprocessing), README.md (the Hub's YAML header and the recipe), the detectron2 and
mmseg backbone files, metrics.jsonl, zoo_row.md (a model-zoo table row, with the downstream numbers
of --results and where they came from) and SHA256SUMS. Load it offline with
timm.create_model("local-dir:OUT_DIR", pretrained=True). Nothing is uploaded without --push.
"""
import argparse
import os
import sys

from semaim_core.errors import HelpFormatter, command
from semaim_core.safe_io import CheckpointError
from tools.lib.publish import PublishError, publish, push, verify


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("run", nargs="?", help="the pretraining run directory")
    ap.add_argument("out", nargs="?", help="the folder to write (written whole, then renamed into place)")
    ap.add_argument("--verify", metavar="FOLDER", help="check a published folder: checksums, every file loads, timm "
                    "builds the model; exit 1 on a problem")
    ap.add_argument("--name", help="the model's name (default: semaim_<arch>_<order>_<epochs>ep)")
    ap.add_argument("--results", nargs="+", default=[], metavar="DIR",
                    help="det / seg / cls run directories whose numbers go into the model-zoo row")
    ap.add_argument("--license", default="mit", help="the weights' license for the Hub header (set what your "
                    "pretraining data allows; default: mit, the suite's)")
    ap.add_argument("--dataset", help="the pretraining dataset's Hub name (default: the run's --data path)")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    ap.add_argument("--push", metavar="REPO", help="upload OUT_DIR to this Hub repository after it verifies")
    ap.add_argument("--token", help="Hub token (default: $HF_TOKEN or huggingface-cli login)")
    args = ap.parse_args(argv)
    try:
        if args.verify:
            problems = verify(args.verify)
            for p in problems:
                print(f"error: {p}", file=sys.stderr)
            print(f"{args.verify}: {'verified' if not problems else f'{len(problems)} problem(s)'}")
            return 1 if problems else 0
        if not (args.run and args.out):
            ap.error("give RUN_DIR and OUT_DIR, or --verify FOLDER")
        out = publish(args.run, args.out, name=args.name, results=args.results, license=args.license,
                      dataset=args.dataset, overwrite=args.overwrite)
        print(f"wrote {out}: load it with timm.create_model('local-dir:{out}', pretrained=True)")
        print((out / "zoo_row.md").read_text(), end="")
        if args.push:
            print(f"pushed: {push(out, args.push, args.token or os.environ.get('HF_TOKEN'))}")
    except (PublishError, CheckpointError) as e:
        sys.exit(f"error: {e}")
    return 0


cli = command(main)  # the console script (pyproject.toml): bad input as one line, no traceback

if __name__ == "__main__":
    sys.exit(cli())
