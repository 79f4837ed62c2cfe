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
"""
import argparse
import sys

from semaim_core import MODEL_SIZES
from semaim_core.checkpoint import (
    CheckpointError,
    detectron2_keys,
    mmseg_keys,
    read_encoder,
    save_atomic,
    save_encoder,
    to_encoder,
)

# The file each framework's own loader reads (the encoder layout is written by save_encoder).
WRITERS = {
    "timm": lambda sd: sd,
    "detectron2": lambda sd: {"model": {f"backbone.net.{k}": v for k, v in detectron2_keys(sd).items()},
                              "__author__": "semaim", "matching_heuristics": False},
    "mmseg": lambda sd: {"state_dict": mmseg_keys(sd)},
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="the checkpoint to read (any kind listed above)")
    ap.add_argument("output", help="where to write the converted file (written atomically)")
    ap.add_argument("--to", choices=["encoder", *sorted(WRITERS)], default="encoder", help="the layout to write")
    standard = ", ".join(f"{c['embed_dim']}: {c['num_heads']}" for c in MODEL_SIZES.values())
    ap.add_argument("--num-heads", type=int, help="attention heads, for a checkpoint whose width is not a standard "
                    f"ViT width (width: heads {standard}) and that does not record them")
    args = ap.parse_args(argv)
    try:
        sd, meta = read_encoder(args.input, args.num_heads)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    if args.to == "encoder":  # .pth or .safetensors (by the output's suffix), with a model card beside it
        save_encoder(to_encoder(sd, meta), args.output)
    else:
        save_atomic(WRITERS[args.to](sd), args.output)
    print(f"{args.input} ({meta['source_kind']}): {len(sd)} encoder tensors, ViT depth {meta['depth']}, "
          f"width {meta['embed_dim']}, patch {meta['patch_size']} -> {args.output} ({args.to})")


if __name__ == "__main__":
    main()
