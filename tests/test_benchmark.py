"""The pretraining benchmark's variants and real-JPEG feed on the CPU (tools/lib/pretrain_benchmark.py);
the GPU figures it produces are in docs/benchmarks.md."""
import json
import math
import os
from pathlib import Path

import pytest

from tools.lib.pretrain_benchmark import main

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = Path(os.environ.get("SEMAIM_OFFICIAL", REPO.parent / "shared" / "reference" / "semaim_official"))


def test_every_variant_runs_from_jpegs_and_the_exact_ones_agree(tiny_coco, tmp_path):
    variants = ["sorted", "fast", "dense", "dense-math"]
    if (OFFICIAL / "models" / "models_semaim.py").is_file():
        variants.append("official")
    out = tmp_path / "bench.jsonl"
    main(["--model", "semaim_vit_tiny_patch16", "--depth", "1", "--img-size", "224", "--batch", "2", "--steps", "1",
          "--warmup", "1", "--dtype", "fp32", "--device", "cpu", "--workers", "0", "--data", str(tiny_coco / "val2017"),
          "--official", str(OFFICIAL), "--variants", *variants, "--json", str(out), "--plot", str(tmp_path / "b.png")])
    rows = {r["variant"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert (tmp_path / "b.png").read_bytes().startswith(b"\x89PNG")
    assert list(rows) == variants
    for r in rows.values():
        assert r["img_per_s"] > 0 and math.isfinite(r["loss"]) and r["data"] == str(tiny_coco / "val2017")
        assert r["device"] == "cpu" and "--variants" in r["command"]
    assert not rows["fast"]["exact"] and rows["sorted"]["exact"]
    # same seed, same JPEG batches, same order draw: the suite's formulations train the same model
    for variant in ("dense", "dense-math", "fast"):  # fast == exact here: with fp32 steps there is no autocast
        assert rows[variant]["loss"] == pytest.approx(rows["sorted"]["loss"], rel=1e-3)
    if "official" in rows:
        assert rows["official"]["dtype"] == "fp16"  # as the authors' main_pretrain.py runs it


def test_the_official_variant_names_what_it_needs(tmp_path):
    with pytest.raises(SystemExit, match="--official PATH"):
        main(["--model", "semaim_vit_tiny_patch16", "--device", "cpu", "--variants", "official"])
    with pytest.raises(SystemExit, match="--img-size 224 only"):
        main(["--model", "semaim_vit_tiny_patch16", "--device", "cpu", "--variants", "official", "--img-size", "64",
              "--official", str(tmp_path)])
