#!/usr/bin/env python
"""Convert a pretrained encoder between the layouts the suite and its frameworks use.

Reads: this suite's training checkpoints and exported encoders, the authors' SemAIM checkpoints,
SAIM checkpoints (split q/k/v) and MAE releases. Writes one of:
  encoder     {"format": "semaim-encoder", "model": ..., "meta": ...}   (what det/, seg/, cls/ read);
              as safetensors (metadata in the header) when OUT ends in .safetensors; a model
              card OUT-stem.md is written beside it
  timm        a plain state dict for timm's VisionTransformer
  detectron2  {"model": {"backbone.net.*": ...}} for DetectionCheckpointer
  mmseg       {"state_dict": ...} in mmseg's MAE/BEiT backbone names

    python tools/convert_checkpoint.py runs/semaim_b/checkpoint-00100000.pth runs/semaim_b/encoder.pth
    python tools/convert_checkpoint.py semaim_authors.pth encoder_d2.pth --to detectron2

Files are read without running code: a pickle that imports anything but plain data, or a
TorchScript archive, is refused. For a file you trust, convert it once with --trust-pickle (it may
run code; a warning says so) to safetensors and use that from then on:

    python tools/convert_checkpoint.py old_release.pth encoder.safetensors --trust-pickle
    python tools/convert_checkpoint.py ViT-B-16.pt clip_vit_b16.safetensors --state-dict --trust-pickle
"""
import argparse
import sys
from pathlib import Path

import torch

from semaim_core import MODEL_SIZES
from semaim_core.errors import HelpFormatter, command, positive_int
from semaim_core.export import save_encoder
from semaim_core.layouts import describe_kind, detectron2_keys, mmseg_keys, read_encoder, to_encoder
from semaim_core.safe_io import CheckpointError, load_file, save_atomic, save_safetensors

# The file each framework's own loader reads (the encoder layout is written by save_encoder).
WRITERS = {
    "timm": lambda sd: sd,
    "detectron2": lambda sd: {"model": {f"backbone.net.{k}": v for k, v in detectron2_keys(sd).items()},
                              "__author__": "semaim", "matching_heuristics": False},
    "mmseg": lambda sd: {"state_dict": mmseg_keys(sd)},
}


def tensors_of(ckpt: dict) -> dict:
    """The state dict in a checkpoint as it is (under teacher / model / state_dict, or the file itself)."""
    for key in ("teacher", "model", "state_dict"):
        if isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    sd = {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError("the file holds no tensors")
    return sd


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("input", help="the checkpoint to read (any kind listed above)")
    ap.add_argument("output", help="where to write the converted file (written atomically)")
    ap.add_argument("--to", choices=["encoder", *sorted(WRITERS)], default="encoder", help="the layout to write")
    standard = ", ".join(f"{c['embed_dim']}: {c['num_heads']}" for c in MODEL_SIZES.values())
    ap.add_argument("--num-heads", type=positive_int, help="attention heads, for a checkpoint whose width is not a "
                    f"standard ViT width (width: heads {standard}) and that does not record them")
    ap.add_argument("--depth", type=positive_int, help="blocks, for a checkpoint that does not record its depth and "
                    "whose width is a standard ViT's but whose depth is not (a file of a standard width is otherwise "
                    "taken to have that ViT's depth, so that one that lost its last blocks is refused)")
    ap.add_argument("--trust-pickle", action="store_true",
                    help="read a pickle outside the allow-list, or a TorchScript archive, with full unpickling: "
                         "THIS MAY RUN CODE THE FILE HOLDS. Only for a file you trust; write safetensors and use "
                         "that from then on")
    ap.add_argument("--state-dict", action="store_true",
                    help="write the file's tensors as they are, to OUT.safetensors, with no encoder conversion "
                         "(e.g. a teacher's weights: OpenAI's TorchScript CLIP archive)")
    args = ap.parse_args(argv)
    try:
        if Path(args.output).is_dir():
            raise CheckpointError(f"the output {args.output} is a folder: name the file to write (e.g. "
                                  f"{Path(args.output) / 'encoder.pth'})")
        if args.state_dict:
            if not args.output.endswith(".safetensors") or args.to != "encoder":
                raise CheckpointError("--state-dict writes the tensors as they are: name an OUT.safetensors and "
                                      "leave out --to")
            sd = tensors_of(load_file(args.input, trust_pickle=args.trust_pickle))
            save_safetensors(sd, args.output)
            print(f"{args.input}: {len(sd)} tensors -> {args.output} (as they are)")
            return
        sd, meta = read_encoder(args.input, args.num_heads, trust_pickle=args.trust_pickle, depth=args.depth)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    if args.to == "encoder":  # .pth or .safetensors (by the output's suffix), with a model card beside it
        save_encoder(to_encoder(sd, meta), args.output)
    else:
        save_atomic(WRITERS[args.to](sd), args.output)
    print(f"{args.input} ({describe_kind(meta)}): {len(sd)} encoder tensors, ViT depth {meta['depth']}, "
          f"width {meta['embed_dim']}, patch {meta['patch_size']} -> {args.output} ({args.to})")


cli = command(main)  # the console script (pyproject.toml): bad input as one line, no traceback

if __name__ == "__main__":
    cli()
