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

from tools.learning_evidence import RECORD, readme_block
from tools.lib.fit_checks import cls_failure, depth_failure, det_failure, seg_failure
from tools.lib.results import ablation, chart_panels, collect, published_rows, results_chart, table

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("demo")]  # one worker runs the demo once


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, DEMO_QUICK="1", DEMO_OUT=str(out), PYTHON=sys.executable,
               DEMO_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))  # the worker's share of the cores
    proc = subprocess.run(["bash", "tools/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


RUNS = ("pretrain", "det", "seg", "cls_ft", "cls_lin", "cls_attn", "cls_knn")  # the demo's run folders of a row


def number(cell: str) -> float:
    assert re.fullmatch(r"\d+(\.\d+)?", cell), f"not a number: {cell!r}"
    return float(cell)


def test_demo_runs_every_stage_and_prints_the_table(demo):
    out, stdout = demo
    assert [f"[demo {i}/9]" in stdout for i in range(1, 10)] == [True] * 9
    assert "Evidence of learning:" in stdout and "always the most frequent class" in stdout
    assert "while pretraining (--monitor, k-NN on the crops): top-1" in stdout  # the curve beside the loss
    fit = json.loads((out / "fit_cls" / "cls_metrics.json").read_text())
    assert fit["top1"] >= 3 * fit["majority_top1"]  # the demo's encoder fits 16 crops too
    for f in ("pretrain/encoder.pth", "det/det_metrics.json", "seg/seg_metrics.json", "cls_ft/cls_metrics.json",
              "cls_lin/cls_metrics.json", "cls_attn/cls_metrics.json", "cls_knn/cls_metrics.json", "orders.png",
              "pretraining.png", "results.md", "results.png"):
        assert (out / f).is_file(), f
    ours = next(line for line in (out / "results.md").read_text().splitlines() if "(ours)" in line)
    cells = [c.strip() for c in ours.strip("|").split("|")]
    header = [c.strip() for c in (out / "results.md").read_text().splitlines()[0].strip("|").split("|")]
    row = dict(zip(header, cells))
    assert row["numbers"] == "same harness" and "| published |" in (out / "results.md").read_text()
    for col in ("top-1 (ft) [crops val]", "top-1 (lin) [crops val]", "top-1 (attn, xtra last2) [crops val]",
                "top-1 (k-NN) [crops val]", "AP box [tiny_coco_val]", "AP mask [tiny_coco_val]", "mIoU [COCOStuff]"):
        assert 0 <= number(row[col]) <= 100, col


def test_readme_shows_a_recorded_full_demo_that_passes_every_fit_check(demo):
    out, _ = demo
    record = json.loads((REPO / RECORD).read_text())  # written with README.md's block by DEMO_README=1
    assert not record["quick"] and record["problems"] == [] and record["threads"] == [2]
    assert readme_block(record) in (REPO / "README.md").read_text()
    fit = record["fit_checks"]  # held to today's pass marks: raising a mark makes the README stale
    assert cls_failure(fit["cls"]) is None and seg_failure(fit["seg"], fit["seg"]["majority"]) is None
    assert det_failure(fit["det"]) is None and depth_failure(fit["depth"], fit["depth"]["constant_rmse"]) is None
    # the demo prints today what the README shows, up to the numbers (quick: no det and seg fit checks)
    quick = json.loads((out / "evidence.json").read_text())
    assert quick["quick"] and quick["problems"] == [] and quick["threads"] == [int(os.environ.get("OMP_NUM_THREADS",
                                                                                                     "2"))]

    def shape(line):
        return re.sub(r"[-+]?\d+(\.\d+)?", "#", line)

    full = [shape(x) for x in record["lines"] if not x.startswith(("fit check: UperNet", "fit check: Mask"))]
    assert [shape(x) for x in quick["lines"]] == full


def test_tables_from_real_runs(demo, tmp_path):
    out, _ = demo
    rows = collect([("ours", [str(out / d) for d in RUNS])])
    assert rows[0].problems == []
    det = json.loads((out / "det" / "det_metrics.json").read_text())
    assert rows[0].values[("ap_box", "tiny_coco_val")] == det["bbox"]["AP"] and rows[0].values[("epochs", "")] == 1
    md = table(rows + published_rows())
    published = next(line for line in md.splitlines() if line.startswith("| SemAIM 800ep (published) |"))
    assert [c.strip() for c in published.strip("|").split("|") if c.strip()] == [
        "SemAIM 800ep (published)", "published", "800", "84.1", "51.3", "45.4", "48.0"]
    # every row says where its numbers come from, and a table mixing the two kinds says so
    assert next(line for line in md.splitlines() if line.startswith("| ours |")).startswith("| ours | same harness |")
    assert "Numbers: 'same harness': computed here" in md
    assert "Numbers:" not in table(rows)  # ours alone: nothing mixed
    parsed = list(csv.reader(io.StringIO(table(rows, "csv"))))
    assert parsed[0][:4] == ["method", "numbers", "epochs", "top-1 (ft) [crops val]"]
    assert parsed[1][:2] == ["ours", "same harness"]
    latex = table(rows + published_rows(), "latex")
    assert latex.startswith("\\begin{tabular}{ll") and "ours & same harness &" in latex and "% 'same harness'" in latex


def test_results_chart_has_one_panel_per_task_and_dataset(demo, tmp_path):
    from PIL import Image

    out, _ = demo
    rows = collect([("ours", [str(out / d) for d in RUNS])])
    panels = dict(chart_panels(rows + published_rows()))
    det = panels["detection and instance segmentation: AP (%), tiny_coco_val"]
    assert det == [("ours\nmeasured here", False, {
        "AP box": (rows[0].values[("ap_box", "tiny_coco_val")], None, 1),
        "AP mask": (rows[0].values[("ap_mask", "tiny_coco_val")], None, 1)})]  # the published rows are COCO's
    coco = panels["detection and instance segmentation: AP (%), COCO val2017"]
    assert coco and all(published and label.endswith("published") for label, published, _ in coco)
    # a row without a task's numbers stays out of its panel: the CLIP-target row has a top-1 only
    assert not any(label.startswith("SemAIM 800ep, CLIP") for label, _, _ in coco)
    crops = [t for t in panels if t.startswith("classification") and "crops" in t]
    assert len(crops) == 1 and set(panels[crops[0]][0][2]) == {"top-1 (ft)", "top-1 (lin)", "top-1 (attn)",
                                                               "top-1 (k-NN)"}
    with Image.open(results_chart(rows + published_rows(), tmp_path / "results.png")) as im:
        assert im.width == 1280  # a slide's width, at the size it is drawn
    with Image.open(out / "results.png") as im:  # the demo drew the same panels
        assert im.width == 1280 and im.height > 600


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
    assert text.splitlines()[0] == "| run | order | top-1 (k-NN) [crops val] |"
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


def test_tables_flag_what_they_cannot_vouch_for(demo, tmp_path):
    out, _ = demo
    nan = tmp_path / "nan"
    shutil.copytree(out / "seg", nan)
    record = json.loads((nan / "seg_metrics.json").read_text())
    record["mIoU"] = float("nan")
    (nan / "seg_metrics.json").write_text(json.dumps(record))
    old = tmp_path / "old"
    shutil.copytree(out / "cls_knn", old)
    record = json.loads((old / "cls_metrics.json").read_text())
    del record["provenance"]
    (old / "cls_metrics.json").write_text(json.dumps(record))
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "cls_metrics.json").write_text(json.dumps(dict(record, mode="zero_shot")))
    (odd / "bbox_metrics.json").write_text("{}")
    big = tmp_path / "big"
    shutil.copytree(out / "seg", big)
    record = json.loads((big / "seg_metrics.json").read_text())
    (big / "seg_metrics.json").write_text(json.dumps(dict(record, mIoU=150.0)))
    rows = collect([("nan", [str(nan)]), ("old", [str(old)]), ("odd", [str(odd)]), ("a | b & c_d", [str(big)])])
    assert any("miou is nan, not a score" in p for p in rows[0].problems)
    assert any("miou is 150.0, outside 0-100: not a percentage" in p for p in rows[3].problems)
    assert r"| a \| b & c_d | same harness |" in table(rows) and "150.0!" in table(rows)  # one cell, flagged
    assert r"a \textbar{} b \& c\_d & same harness" in table(rows, "latex")
    assert any("no provenance" in p for p in rows[1].problems)
    assert any("unknown cls mode 'zero_shot'" in p for p in rows[2].problems)
    assert any("bbox_metrics.json: unknown metrics file" in p for p in rows[2].problems)
    md = table(rows)
    assert "nan!" in md and re.search(r"\| old \|[^\n]*\d\?", md)
    proc = subprocess.run([sys.executable, "tools/make_tables.py", "--row", "old", str(old), "--no-published"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and "no provenance" in proc.stderr


def test_columns_name_their_dataset_and_published_rows_their_source(demo, tmp_path):
    out, _ = demo
    rows = collect([("ours", [str(out / d) for d in ("det", "cls_ft")])])
    md = table(rows + published_rows())
    header = md.splitlines()[0]
    assert "top-1 (ft) [crops val]" in header and "top-1 (ft) [ImageNet-1k val]" in header
    assert "AP box [tiny_coco_val]" in header and "AP box [COCO val2017]" in header
    assert "MAE 1600ep (published)" in md and "Mask R-CNN with FPN, not ViTDet" in md
    vitdet = next(line for line in md.splitlines() if line.startswith("| MAE 1600ep, ViTDet recipe"))
    assert "51.6" in vitdet and "45.9" in vitdet and "48.1" in vitdet
    ours = next(line for line in md.splitlines() if line.startswith("| ours"))
    assert "|  |" in ours  # missing values are blank, not 0 or '-'
    assert len({r.method for r in published_rows()}) == len(published_rows())  # distinct legend entries
    proc = subprocess.run([sys.executable, "tools/make_tables.py", "--row", "ours", str(out / "det"),
                           str(out / "cls_knn"), "--provenance", "--no-published"], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"ours \| ap_box \[tiny_coco_val\]: in-training model of .*det; iteration \d+; 50 images; commit",
                     proc.stdout)
    knn = json.loads((out / "cls_knn" / "cls_metrics.json").read_text())  # the table: k 20, T 0.07; here: the rest
    sweep = next(line for line in proc.stdout.splitlines() if "knn [crops val] sweep, top-1: " in line)
    assert sweep.count(" T ") == 12 and f"k 20 T 0.07 {knn['top1']:.1f}, " in sweep and "k 200 T 0.2 " in sweep


def test_the_attentive_probe_column_names_its_protocol_and_flags_a_mix():
    from tools.lib.results import Row, columns

    def row(name, protocol):
        key = ("attnprobe", "crops val")
        return Row(name, {key: 50.0}, {key: dict(file="f", **({"protocol": protocol} if protocol else {}))})

    assert [label for _, label in columns([row("a", "xtra last6"), row("b", "xtra last6"), row("c", None)])] == [
        "top-1 (attn, xtra last6) [crops val]"]
    assert [label for _, label in columns([row("a", "xtra last6"), row("b", "aimv2 last1")])] == [
        "top-1 (attn, aimv2 last1 / xtra last6!) [crops val]"]
