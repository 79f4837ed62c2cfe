"""The end-to-end demo (shortened) on the bundled data, and the results tables built from the real
metric files it writes."""
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from semaim_core.results import ablation, collect, published_rows, table

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, DEMO_QUICK="1", DEMO_OUT=str(out), PYTHON=sys.executable)
    proc = subprocess.run(["bash", "tools/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def number(cell: str) -> float:
    assert re.fullmatch(r"\d+(\.\d+)?", cell), f"not a number: {cell!r}"
    return float(cell)


def test_demo_runs_every_stage_and_prints_the_table(demo):
    out, stdout = demo
    assert [f"[demo {i}/7]" in stdout for i in range(1, 8)] == [True] * 7
    for f in ("pretrain/encoder.pth", "det/det_metrics.json", "seg/seg_metrics.json", "cls_ft/cls_metrics.json",
              "cls_lin/cls_metrics.json", "cls_knn/cls_metrics.json", "orders.png", "results.md", "results.png"):
        assert (out / f).is_file(), f
    ours = next(line for line in (out / "results.md").read_text().splitlines() if "(ours)" in line)
    cells = [c.strip() for c in ours.strip("|").split("|")]
    header = [c.strip() for c in (out / "results.md").read_text().splitlines()[0].strip("|").split("|")]
    row = dict(zip(header, cells))
    for col in ("IN top-1 (ft)", "lin", "k-NN", "AP box", "AP mask", "mIoU"):
        assert 0 <= number(row[col]) <= 100, col


def test_tables_from_real_runs(demo, tmp_path):
    out, _ = demo
    rows = collect([("ours", [str(out / d) for d in ("pretrain", "det", "seg", "cls_ft", "cls_lin", "cls_knn")])])
    assert rows[0].problems == []
    det = json.loads((out / "det" / "det_metrics.json").read_text())
    assert rows[0].values["ap_box"] == det["bbox"]["AP"] and rows[0].values["epochs"] == 1
    md = table(rows + published_rows())
    assert "| SemAIM (published) | 800 | 84.1 | - | - | 51.3 | 45.4 | 48.0 |" in md
    parsed = list(csv.reader(io.StringIO(table(rows, "csv"))))
    assert parsed[0][:3] == ["method", "epochs", "IN top-1 (ft)"] and parsed[1][0] == "ours"
    latex = table(rows, "latex")
    assert latex.startswith("\\begin{tabular}") and "ours &" in latex


def test_ablation_of_one_setting(demo, tmp_path):
    out, _ = demo
    raster = tmp_path / "raster"
    subprocess.run([sys.executable, "-m", "semaim_core.pretrain", "--preset", "demo", "--data",
                    str(REPO / "data/tiny_coco/train2017"), "--output-dir", str(raster), "--epochs", "1",
                    "--order", "raster", "--num-workers", "0"], check=True, capture_output=True, timeout=600)
    rows = collect([("semantic", [str(out / "pretrain"), str(out / "cls_knn")]),
                    ("raster", [str(raster)])])
    text, warnings = ablation(rows)
    assert warnings == []
    assert text.splitlines()[0] == "| run | order | k-NN |"
    assert "| semantic | semantic |" in text and "| raster | raster |" in text


def test_problems_are_reported_per_run(demo, tmp_path):
    out, _ = demo
    broken = tmp_path / "broken"
    shutil.copytree(out / "det", broken)
    (broken / "det_metrics.json").write_text("{not json")
    empty = tmp_path / "empty"
    empty.mkdir()
    rows = collect([("a", [str(broken)]), ("b", [str(empty), str(tmp_path / "missing")])])
    assert any("not readable JSON" in p for p in rows[0].problems)
    assert any("none of det_metrics.json" in p for p in rows[1].problems)
    assert any("no such directory" in p for p in rows[1].problems)
    proc = subprocess.run([sys.executable, "tools/make_tables.py", "--row", "a", str(broken)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "not readable JSON" in proc.stderr
