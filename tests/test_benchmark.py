"""The pretraining benchmark's variants and real-JPEG feed on the CPU (tools/lib/pretrain_benchmark.py);
the GPU figures it produces are in docs/benchmarks.md."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.lib.pretrain_benchmark import main

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = Path(os.environ.get("SEMAIM_OFFICIAL", REPO.parent / "shared" / "reference" / "semaim_official"))


@pytest.mark.slow
def test_every_variant_runs_from_jpegs_and_the_exact_ones_agree(tiny_coco, tmp_path):
    variants = ["sorted", "fast", "fp8", "dense", "dense-math"]
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
    assert not rows["fast"]["exact"] and not rows["fp8"]["exact"] and rows["sorted"]["exact"]
    # same seed, same JPEG batches, same order draw: the suite's formulations train the same model
    for variant in ("dense", "dense-math", "fast"):  # fast == exact here: with fp32 steps there is no autocast
        assert rows[variant]["loss"] == pytest.approx(rows["sorted"]["loss"], rel=1e-3)
    assert rows["fp8"]["dtype"] == "fp32+fp8" and rows["fp8"]["loss"] == pytest.approx(rows["fast"]["loss"], rel=2e-2)
    if "official" in rows:
        assert rows["official"]["dtype"] == "fp16"  # as the authors' main_pretrain.py runs it


def test_the_official_variant_names_what_it_needs(tmp_path):
    with pytest.raises(SystemExit, match="--official PATH"):
        main(["--model", "semaim_vit_tiny_patch16", "--device", "cpu", "--variants", "official"])
    with pytest.raises(SystemExit, match="--img-size 224 only"):
        main(["--model", "semaim_vit_tiny_patch16", "--device", "cpu", "--variants", "official", "--img-size", "64",
              "--official", str(tmp_path)])


def test_the_jpeg_feed_is_compared_with_synthetic_tensors_in_the_same_run(tiny_coco, capsys):
    rows = main(["--model", "semaim_vit_tiny_patch16", "--depth", "1", "--img-size", "64", "--batch", "2", "--steps",
                 "1", "--warmup", "1", "--dtype", "fp32", "--device", "cpu", "--workers", "0", "--variants", "sorted",
                 "--data", str(tiny_coco / "val2017"), "--compare-synthetic"])
    assert [r["data"] for r in rows] == ["synthetic", str(tiny_coco / "val2017")]
    ratio = rows[1]["img_per_s"] / rows[0]["img_per_s"]
    assert f"sorted: JPEG / synthetic throughput: {ratio:.3f}" in capsys.readouterr().out


@pytest.mark.slow(seconds=100)
def test_the_gpu_benchmark_script_runs_every_stage(tiny_coco, tmp_path):
    """tools/benchmark_gpu.sh, shrunk to a CPU smoke run, so that a GPU session only has to call it."""
    stages = ["fast", "jpeg", "large", "curve", "agreement", "plot"]
    if (OFFICIAL / "models" / "models_semaim.py").is_file():
        stages.insert(0, "exact")
    env = dict(os.environ, OUT=str(tmp_path), OFFICIAL=str(OFFICIAL), DEVICE="cpu", MODEL="semaim_vit_tiny_patch16",
               LARGE_MODEL="semaim_vit_tiny_patch16", BATCH="2", LARGE_BATCH="1", STEPS="1", WARMUP="1",
               WORKERS="0", COMPILE="", CURVE_STEPS="3", BENCH_ARGS="--depth 1 --dtype fp32",
               PRETRAIN_ARGS="--depth 1 --img-size 64 --dtype fp32", PYTHON=sys.executable)
    proc = subprocess.run(["bash", "tools/benchmark_gpu.sh", *stages], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "bench.jsonl").read_text().splitlines()]
    expected = (["sorted", "official"] if "exact" in stages else []) + ["sorted", "fast", "fp8", "sorted", "sorted",
                                                                        "sorted", "sorted"]
    assert [r["variant"] for r in rows] == expected
    assert [r["grad_checkpointing"] for r in rows[-2:]] == [False, True] and rows[-1]["batch"] == 2
    assert "differs from the reference in: float8 False -> True" in proc.stdout
    assert "center agreement, similarity pass in bf16 autocast vs fp32" in (tmp_path / "agreement.txt").read_text()
    for png in ("bench.png", "loss.png"):
        assert (tmp_path / png).read_bytes().startswith(b"\x89PNG")
