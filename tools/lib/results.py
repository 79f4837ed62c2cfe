"""Collect the metric files that the suite's runs write into the paper's tables.

A *row* is a name and the run directories that belong to one pretrained encoder: its
pretraining run (``config.json``), and any of det (``det_metrics.json``), seg
(``seg_metrics.json``), depth (``depth_metrics.json``) and cls (``cls_metrics.json``) runs. Every
problem is reported for its row
and makes the tool exit 1: a missing directory, a file that is not the expected JSON, an unknown
metrics file or cls mode, a value that is not a number (NaN included), a file without provenance.

A column is a metric *on a dataset*: the label names the dataset the numbers came from, so an
ImageNet top-1 never stands above a top-1 measured on other images.

Seeds: a row may hold several runs of one task (one directory each). When their recipes (each
run's ``run.json``) differ in the seed alone and each file was scored at the same point of training
(the iteration or epoch its provenance records), the cell is their mean ± sample std (n); otherwise
the cell is left empty and the difference is named: runs of two recipes, or a finished run and one
that stopped half-way, are never averaged.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from semaim_core import recipe
from semaim_core.errors import UserError
from semaim_core.provenance import suite_commit
from tools.lib.figures import pyplot, save_figure

# DESIGN.md section 5: published ViT-B/16 numbers (ImageNet-1k pretraining), with their setups
IN1K, COCO, ADE = "ImageNet-1k val", "COCO val2017", "ADE20K val"
NYU = "NYU"  # what a depth run on NYUDataset records
PUBLISHED = [
    dict(method="MAE 1600ep", source="MAE paper (detection: Mask R-CNN with FPN, not ViTDet)",
         top1=83.6, ap_box=50.3, ap_mask=44.9, miou=48.1),
    dict(method="MAE 1600ep, ViTDet recipe", source="detectron2 ViTDet README; mmseg MAE UperNet config",
         ap_box=51.6, ap_mask=45.9, miou=48.13),
    dict(method="SAIM 800ep", source="SAIM paper", top1=83.9, ap_box=49.4, ap_mask=43.9, miou=47.8),
    dict(method="SemAIM 400ep", source="SemAIM paper, Table 5", top1=83.8, ap_box=50.7, ap_mask=45.0),
    dict(method="SemAIM 800ep", source="SemAIM paper, Table 5", top1=84.1, ap_box=51.3, ap_mask=45.4, miou=48.0),
    dict(method="SemAIM 800ep, CLIP targets", source="SemAIM paper, Table 5", top1=85.3),
    dict(method="MAE 1600ep, efficient probing", source="the ICLR 2026 efficient-probing leaderboard's MAE ViT-B/16 "
         "row (frozen features; its own k-NN, linear and attentive-probe protocols)", knn=35.6, linprobe=67.8,
         attnprobe=75.5),
    # frozen-feature references from other pretraining data (LVD-142M / LVD-1689M), by their model cards
    dict(method="DINOv2 ViT-B/14 distilled", source="facebookresearch/dinov2 MODEL_CARD.md (LVD-142M; k-NN and "
         "linear on ImageNet-1k, linear on ImageNet-V2; NYU Depth v2 RMSE of the linear head on 4 blocks, lin. 4)",
         knn=82.1, linprobe=84.5, cells={("linprobe", "ImageNet-V2"): 74.9, ("rmse", NYU): 0.362}),
    dict(method="DINOv3 ViT-B/16 distilled", source="facebookresearch/dinov3 MODEL_CARD.md (LVD-1689M; the DINOv3 "
         "paper's linear probes; NYU Depth v2 RMSE of its linear head on the last block, with BatchNorm and "
         "without the [CLS] token)", cells={("linprobe", "ImageNet-ReaL"): 89.3, ("linprobe", "ImageNet-R"): 76.7,
                                            ("miou_linear", ADE): 51.8, ("rmse", NYU): 0.373}),
]
PUBLISHED_DATASETS = dict(top1=IN1K, linprobe=IN1K, attnprobe=IN1K, knn=IN1K, ap_box=COCO, ap_mask=COCO, miou=ADE)
METRICS = [("top1", "top-1 (ft)"), ("linprobe", "top-1 (lin)"), ("attnprobe", "top-1 (attn)"), ("knn", "top-1 (k-NN)"),
           ("ap_box", "AP box"), ("ap_mask", "AP mask"), ("miou", "mIoU"), ("miou_linear", "mIoU (linear)"),
           ("rmse", "RMSE m (linear)"), ("abs_rel", "AbsRel (linear)"), ("delta1", "δ1 % (linear)")]
DEPTH = {"rmse": "rmse", "abs_rel": "abs_rel", "delta1": "d1"}  # column -> depth_metrics.json key
DECIMALS = {"rmse": 3, "abs_rel": 3}  # errors in metres / ratios; every other score is a percentage
CLS_MODES = {"finetune": "top1", "linprobe": "linprobe", "attnprobe": "attnprobe", "knn": "knn"}
METRIC_FILES = ("det_metrics.json", "seg_metrics.json", "depth_metrics.json", "cls_metrics.json")
# config.json entries that are not pretraining settings to compare: the trainer's operational and
# stopping settings, and the values it derives (world size, effective batch, absolute lr)
OPERATIONAL = (*recipe.OPERATIONAL, *recipe.STOPPING, "world_size", "effective_batch", "lr")


# the seed in each trainer's recipe (run.json): det (detectron2 LazyConfig), seg (mmengine), cls
SEED_KEYS = ("train.seed", "randomness.seed", "seed")


class MetricsError(UserError, ValueError):
    pass


@dataclass
class Row:
    method: str
    values: dict = field(default_factory=dict)     # (metric, dataset) -> number (the mean, over seeds)
    sources: dict = field(default_factory=dict)    # (metric, dataset) -> provenance of that number
    spread: dict = field(default_factory=dict)     # (metric, dataset) -> (sample std, n) over seeds
    delta: dict = field(default_factory=dict)      # (metric, dataset) -> (difference, its std or None), ablations
    samples: dict = field(default_factory=dict)    # (metric, dataset) -> [(value, provenance, recipe)] per run
    settings: dict = field(default_factory=dict)   # the pretraining recipe
    problems: list = field(default_factory=list)
    published: bool = False
    note: str = ""


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise MetricsError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise MetricsError(f"{path}: not a JSON object")
    return data


def _get(data: dict, key: str, path: Path):
    node = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise MetricsError(f"{path}: no '{key}' (is it a file the suite wrote?)")
        node = node[part]
    return node


def _dataset(kind: str, data: dict) -> str:
    p = data.get("provenance") or {}
    if kind == "cls":
        folder = Path((p.get("dataset") or data.get("data") or "unknown").rstrip("/"))
        if folder.name not in ("val", "train"):  # files written before the folder named its split
            folder = folder / "val"
        return f"{folder.parent.name} {folder.name}"
    if kind == "det":
        return str(data.get("dataset") or p.get("dataset") or "unknown")
    return str(p.get("dataset") or "unknown").split(" ")[0].removesuffix("Dataset") or "unknown"


def _extract(name: str, data: dict, path: Path) -> dict:
    """{(metric, dataset): value} of one metrics file."""
    if name == "det_metrics.json":
        # detectron2's COCOEvaluator with no detection to score: box AP null (NaN) and no mask task at all
        if data.get("task") == "det" and not data.get("segm") and all(
                v is None for v in (data.get("bbox") or {}).values()):
            raise MetricsError(f"{path}: the evaluation had no predictions to score (the detector predicted nothing "
                               f"on {_dataset('det', data)}, so detectron2 reports no AP): an untrained or diverged "
                               "detector; check its training log")
        dataset = _dataset("det", data)
        return {("ap_box", dataset): _get(data, "bbox.AP", path), ("ap_mask", dataset): _get(data, "segm.AP", path)}
    if name == "seg_metrics.json":  # a frozen encoder's linear head is its own column
        metric = "miou_linear" if data.get("protocol") == "linear" else "miou"
        return {(metric, _dataset("seg", data)): _get(data, "mIoU", path)}
    if name == "depth_metrics.json":
        return {(column, _dataset("seg", data)): _get(data, key, path) for column, key in DEPTH.items()}
    mode = _get(data, "mode", path)
    if mode not in CLS_MODES:
        raise MetricsError(f"{path}: unknown cls mode {mode!r} (expected one of {', '.join(CLS_MODES)})")
    metric = CLS_MODES[mode]
    values = {(metric, _dataset("cls", data)): _get(data, "top1", path)}
    for name, scored in (data.get("eval_sets") or {}).items():  # robustness sets: a column each
        values[(metric, scored.get("dataset", name))] = scored.get("top1")
    return values


def collect_dir(run: Path, row: Row) -> None:
    """Add what ``run`` holds to ``row``; problems go to ``row.problems``."""
    if not run.is_dir():
        row.problems.append(f"{run}: no such directory")
        return
    found = False
    for path in sorted(run.glob("*_metrics.json")):
        if path.name not in METRIC_FILES:
            row.problems.append(f"{path}: unknown metrics file (expected {', '.join(METRIC_FILES)})")
    for name in METRIC_FILES:
        path = run / name
        if not path.is_file():
            continue
        found = True
        try:
            data = _read(path)
            values = _extract(name, data, path)
        except MetricsError as e:
            row.problems.append(str(e))
            continue
        source = dict(data.get("provenance") or {}, file=str(path))
        if data.get("sweep"):  # k-NN: every k and T scored; the cell shows the headline
            source["sweep"] = data["sweep"]
        if data.get("preset"):  # the attentive probe's recipe and probed blocks: the column names them
            source["protocol"] = f"{data['preset']} {data['probe_layers']}"
        if data.get("protocol") == "linear":  # the blocks a linear segmentation or depth head read
            source["protocol"] = "blocks " + ",".join(map(str, data.get("blocks", [])))
        if "provenance" not in data:
            row.problems.append(f"{path}: no provenance (checkpoint, dataset, commit): re-run the evaluation "
                                "with this version of the suite; its cells are flagged '?'")
        for (metric, dataset), value in values.items():
            if value is None:
                row.problems.append(f"{path}: {metric} is null (nothing could be scored)")
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                row.problems.append(f"{path}: {metric} is {value!r}, not a number")
            elif math.isnan(value) or math.isinf(value):
                row.problems.append(f"{path}: {metric} is {value}, not a score")
            elif not 0 <= value <= 100:
                row.problems.append(f"{path}: {metric} is {value}, outside 0-100: not a percentage (the file was "
                                    "edited, or written by another tool)")
            row.samples.setdefault((metric, dataset), []).append((value, source, _recipe(run)))
    cfg = run / "config.json"
    if cfg.is_file():
        found = True
        try:
            c = _read(cfg)
            _get(c, "model", cfg)
            row.settings.update({k: v for k, v in c.items() if k not in OPERATIONAL})
            row.settings["decoder_depth"] = c.get("decoder_depth") or c.get("depth")
            row.values.setdefault(("epochs", ""), c["epochs"])
        except (MetricsError, KeyError) as e:
            row.problems.append(str(e))
    if not found:
        row.problems.append(f"{run}: none of {', '.join(METRIC_FILES)}, config.json")


def _recipe(run: Path) -> dict | None:
    """The recipe a downstream run recorded (run.json), or None for runs written before it."""
    path = run / "run.json"
    return _read(path) if path.is_file() else None


def seed_groups(samples: list[tuple]) -> tuple[float, tuple[float, int] | None, str | None]:
    """(mean, (sample std, n) or None for one run, problem or None) of one cell's runs: they must
    be seeds of one recipe, each with its own seed."""
    values = [v for v, _, _ in samples]
    if len(samples) == 1:
        return values[0], None, None
    files = ", ".join(src["file"] for _, src, _ in samples)
    recipes = [r for _, _, r in samples]
    if any(r is None for r in recipes):
        return math.nan, None, f"{files}: a run without run.json cannot be shown to share the others' recipe"
    first = recipes[0]
    for other in recipes[1:]:
        differ = sorted(k for k in set(first) | set(other) if k not in SEED_KEYS and first.get(k) != other.get(k))
        if differ:
            k = differ[0]
            return math.nan, None, (f"{files}: not seeds of one recipe, not averaged: they differ in {k} "
                                    f"({first.get(k)!r} -> {other.get(k)!r})"
                                    + (f" and {len(differ) - 1} more settings" if len(differ) > 1 else ""))
    points = [next((f"{k} {src[k]}" for k in ("iteration", "epoch") if src.get(k) is not None), "an unrecorded point")
              for _, src, _ in samples]
    if len(set(points)) > 1:  # e.g. a run that died after a periodic evaluation: its file is half-trained
        scored = ", ".join(f"{src['file']} at {point}" for (_, src, _), point in zip(samples, points))
        return math.nan, None, (f"scored at different points of training, not averaged: {scored}. A run that "
                                "stopped early (or died after a periodic evaluation) is not a seed of the finished "
                                "ones: finish it (the same command with --resume) or leave it out")
    seeds = [next((r[k] for k in SEED_KEYS if k in r), None) for r in recipes]
    if len(set(map(str, seeds))) < len(seeds):
        return math.nan, None, f"{files}: the same seed twice ({seeds}): one run counted twice?"
    if not all(_is_score(v) for v in values):
        return math.nan, None, None  # the bad value is already reported
    return statistics.fmean(values), (statistics.stdev(values), len(values)), None


def collect(rows: list[tuple[str, list[str]]]) -> list[Row]:
    out = []
    for name, dirs in rows:
        row = Row(name)
        for d in dirs:
            collect_dir(Path(d), row)
        for key, samples in row.samples.items():
            mean, spread, problem = seed_groups(samples)
            if problem:
                row.problems.append(problem)
                continue
            row.values[key], row.sources[key] = mean, samples[0][1]
            if spread:
                row.spread[key] = spread
                row.sources[key] = dict(samples[0][1], runs=[src for _, src, _ in samples])
        out.append(row)
    return out


def published_rows() -> list[Row]:
    rows = []
    for r in PUBLISHED:
        values = {(k, PUBLISHED_DATASETS[k]): v for k, v in r.items() if k in PUBLISHED_DATASETS}
        values.update(r.get("cells", {}))  # a metric on another dataset than its usual one
        epochs = re.search(r" (\d+)ep\b", r["method"])  # "MAE 1600ep": the pretraining length, where named
        if epochs:
            values[("epochs", "")] = int(epochs.group(1))
        rows.append(Row(f"{r['method']} (published)", values, published=True, note=r["source"]))
    return rows


def columns(rows: list[Row]) -> list[tuple[tuple[str, str], str]]:
    """((metric, dataset), label) for every metric and dataset some row has, in the paper's order."""
    seen = {k for r in rows for k in r.values}
    cols = [(("epochs", ""), "epochs")] if ("epochs", "") in seen else []
    for metric, label in METRICS:
        for dataset in sorted({d for m, d in seen if m == metric}):
            protocols = {r.sources[(metric, dataset)].get("protocol") for r in rows if (metric, dataset) in r.sources}
            protocols.discard(None)  # a published row or a file written before the protocol was recorded
            named = label
            if protocols:  # "top-1 (attn, xtra last6)"; rows probed otherwise cannot share the column unflagged
                named = label[:-1] + f", {' / '.join(sorted(protocols))}{'!' if len(protocols) > 1 else ''})"
            cols.append(((metric, dataset), f"{named} [{dataset}]"))
    return cols


def _cell(row: Row, key) -> str:
    value = row.values.get(key)
    if value is None:
        return ""
    if key[0] not in dict(METRICS):  # a setting or the epochs, not a score
        return f"{value:g}" if isinstance(value, float) else str(value)
    if not _is_score(value):
        return f"{value}!"
    digits = DECIMALS.get(key[0], 1)
    text = f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    if key in row.spread:
        std, n = row.spread[key]
        text += f" ± {std:.{digits}f} ({n})"
    if key in row.delta:
        diff, diff_std = row.delta[key]
        text += f", Δ {diff:+.{digits}f}" + (f" ± {diff_std:.{digits}f}" if diff_std is not None else "")
    runs = row.sources.get(key, {}).get("runs") or [row.sources.get(key)]
    return text + ("?" if key in row.sources and any("checkpoint" not in src for src in runs) else "")


HARNESS_NOTE = ("'same harness': computed here, by this suite's recipes, with provenance; 'published': "
                "copied from a paper or release, with its own setup (named in its source): compare across the "
                "two with that in mind")


def harness(row: Row) -> str:
    return "published" if row.published else "same harness"


def table(rows: list[Row], fmt: str = "md", cols=None, first: str = "method", marks: bool = True) -> str:
    """The rows in ``fmt``; with ``marks``, a column says where each row's numbers come from, and a
    table that mixes the two kinds says so under it."""
    cols = cols if cols is not None else columns(rows)
    heads = [first] + (["numbers"] if marks else []) + [h for _, h in cols]
    lines = [[r.method] + ([harness(r)] if marks else []) + [_cell(r, k) for k, _ in cols] for r in rows]
    mixed = marks and len({harness(r) for r in rows}) > 1
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([heads, *lines])
        return buf.getvalue()
    if fmt == "latex":
        body = "\n".join(" & ".join(_latex(c) for c in line) + r" \\" for line in lines)
        return (f"\\begin{{tabular}}{{l{'l' * marks}{'r' * len(cols)}}}\n\\toprule\n" + " & ".join(map(_latex, heads))
                + " \\\\\n\\midrule\n" + body + "\n\\bottomrule\n\\end{tabular}\n"
                + (f"% {HARNESS_NOTE}\n" if mixed else ""))
    lines = [[c.replace("|", r"\|") for c in line] for line in lines]  # a | in a name would split its cell
    out = ["| " + " | ".join(heads) + " |", "|" + "---|" * (1 + marks) + "---:|" * len(cols)]
    notes = [f"- {r.method}: {r.note}" for r in rows if r.note]
    text = "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines]) + "\n"
    text += f"\nNumbers: {HARNESS_NOTE}.\n" if mixed else ""
    return text + ("\nSources of the published rows:\n" + "\n".join(notes) + "\n" if notes else "")


def provenance_lines(rows: list[Row]) -> list[str]:
    """One line per cell: where its number came from."""
    lines = []
    for r in rows:
        cells = [(key, run) for key, src in sorted(r.sources.items(), key=lambda kv: kv[0])
                 for run in src.get("runs") or [src]]
        for (metric, dataset), src in cells:
            ckpt = src.get("checkpoint") or {}
            what = (f"checkpoint {ckpt.get('path')} (sha256 {str(ckpt.get('sha256'))[:12]})" if ckpt
                    else f"in-training model of {src.get('run')}" if src.get("run") else "no provenance")
            step = next((f"{k} {src[k]}" for k in ("iteration", "epoch") if src.get(k) is not None), "")
            lines.append(f"{r.method} | {metric} [{dataset}]: {what}; {step}; {src.get('images')} images; "
                         f"commit {src.get('suite_commit')}; file {src['file']}")
            if src.get("sweep"):
                lines.append(f"{r.method} | {metric} [{dataset}] sweep, top-1: " + ", ".join(
                    f"k {e['k']} T {e['temperature']} {e['top1']:.1f}" for e in src["sweep"]))
    return lines


def differences(row: Row, reference: Row) -> dict:
    """{cell: (row - reference, std of that difference)} for the scores both rows have; the std is
    sqrt(s1^2 / n1 + s2^2 / n2), the spread of a difference of two seed means, when both rows have
    several seeds (else None: a single run says nothing about its noise)."""
    out = {}
    for key, value in row.values.items():
        ref = reference.values.get(key)
        if key[0] not in dict(METRICS) or not (_is_score(value) and _is_score(ref)):
            continue
        spreads = [row.spread.get(key), reference.spread.get(key)]
        std = math.sqrt(sum(s * s / n for s, n in spreads)) if all(spreads) else None
        out[key] = (value - ref, std)
    return out


def ablation(rows: list[Row], fmt: str = "md") -> tuple[str, list[str]]:
    """Rows that differ in pretraining settings (the paper's Tables 1-3): every recipe setting that
    differs becomes a column; a warning says when more than one does."""
    keys = sorted({k for r in rows for k in r.settings}
                  if rows else set(), key=str)
    keys = [k for k in keys if len({json.dumps(r.settings.get(k), sort_keys=True, default=str) for r in rows}) > 1]
    warnings = []
    if not keys:
        warnings.append("the runs do not differ in any pretraining setting (order, target, decoder depth, ...)")
    elif len(keys) > 1:
        warnings.append(f"the runs differ in {len(keys)} settings at once ({', '.join(keys)}): "
                        "not a one-factor ablation")
    metric_cols = [c for c in columns(rows) if c[0][0] != "epochs"]
    shown = [Row(r.method, {**{(k, ""): r.settings.get(k) for k in keys}, **r.values}, r.sources, r.spread,
                 delta=differences(r, rows[0]) if r is not rows[0] else {}) for r in rows]
    cols = [((k, ""), k.replace("_", " ")) for k in keys] + metric_cols
    return table(shown, fmt, cols, first="run", marks=False), warnings  # every row measured here


TASKS = [("classification: top-1 (%)", ("top1", "linprobe", "attnprobe", "knn")),
         ("detection and instance segmentation: AP (%)", ("ap_box", "ap_mask")),
         ("semantic segmentation: mIoU (%)", ("miou", "miou_linear")),
         ("monocular depth: δ1 (%)", ("delta1",))]  # RMSE and AbsRel, not percentages, are in the tables alone


def chart_panels(rows: list[Row]) -> list[tuple[str, list[tuple[str, bool, dict]]]]:
    """(title, entries) per task and dataset that some row has a number for, so that only numbers
    of one dataset share an axis (the demo's crops never stand beside ImageNet). An entry is one
    row: (label, published, {metric label: (mean, sample std over seeds or None, seeds)}); the rows
    measured here come first, the published ones after them."""
    labels = dict(METRICS)
    panels = []
    for title, metrics in TASKS:
        datasets = sorted({d for r in rows for (m, d), v in r.values.items() if m in metrics and _is_score(v)})
        for d in datasets:
            entries = []
            for r in sorted(rows, key=lambda r: r.published):  # stable: the given order within each kind
                values = {labels[m]: (r.values[(m, d)], *r.spread.get((m, d), (None, 1)))
                          for m in metrics if _is_score(r.values.get((m, d)))}
                if values:
                    kind = "published" if r.published else "measured here"
                    entries.append((f"{r.method.removesuffix(' (published)')}\n{kind}", r.published, values))
            panels.append((f"{title}, {d}", entries))
    return panels


def _is_score(value) -> bool:
    """A number that can be a percentage (every metric in the tables is one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and \
        0 <= value <= 100


LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {"\\": r"\textbackslash{}", "|": r"\textbar{}",
                                                      "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(c, c) for c in text).replace("±", r"$\pm$")


def axis_range(points: list[tuple[float, float | None]]) -> tuple[float, float]:
    """An x range around (value, error) points that shows their differences: the smallest and
    largest extent, padded by 15 % of the span (at least 1 point), inside 0-100."""
    lo = min(v - (e or 0) for v, e in points)
    hi = max(v + (e or 0) for v, e in points)
    pad = max(1.0, 0.15 * (hi - lo))
    return max(0.0, lo - pad), min(100.0, hi + pad)


def results_figure(rows: list[Row], caption: str):
    """One panel per task and dataset: each row's numbers as points with the seeds' sample std as
    error bars, on an axis scaled to the compared values; the published rows (hollow markers) below
    a line under the rows measured here; ``caption`` under the panels."""
    plt = pyplot()
    panels = chart_panels(rows)
    if not panels:
        raise MetricsError("no row has a number to plot")
    heights = [0.55 * len(entries) + 0.9 for _, entries in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(12.8, sum(heights) + 0.4), squeeze=False, layout="constrained",
                             gridspec_kw=dict(height_ratios=heights))
    colours = dict(zip(dict(METRICS).values(), plt.get_cmap("tab10").colors))
    for ax, (title, entries) in zip(axes[:, 0], panels):
        metrics = list(dict.fromkeys(m for _, _, values in entries for m in values))
        step, labelled = 0.6 / len(metrics), set()
        for i, (_, published, values) in enumerate(entries):
            shown = [m for m in metrics if m in values]  # an entry's points sit together, centred on its label
            for j, metric in enumerate(shown):
                mean, std, n = values[metric]
                y = i + (j - (len(shown) - 1) / 2) * step
                ax.errorbar(mean, y, xerr=std, fmt="o", color=colours[metric], capsize=4, markersize=7,
                            markerfacecolor="white" if published else colours[metric],
                            label=None if metric in labelled else metric)  # one legend entry per metric
                labelled.add(metric)
                text = f"{mean:.1f}" + (f" ± {std:.1f} ({n} seeds)" if std is not None else "")
                ax.annotate(text, (mean, y), xytext=(8, 4), textcoords="offset points", fontsize=8)
        measured = sum(not published for _, published, _ in entries)
        if 0 < measured < len(entries):
            ax.axhline(measured - 0.5, color="0.6", linewidth=0.8)
        ax.set_xlim(*axis_range([(mean, std) for _, _, values in entries for mean, std, _ in values.values()]))
        ax.set_yticks(range(len(entries)), [label for label, _, _ in entries], fontsize=9)
        ax.set_ylim(len(entries) - 0.5, -0.5)
        ax.grid(axis="x", color="0.9")
        ax.set_title(title, fontsize=11, loc="left")
        ax.legend(fontsize=9, loc="best")
    fig.supxlabel(caption, fontsize=8, x=0.0, ha="left", color="0.35")
    return fig


def results_chart(rows: list[Row], path: str | Path) -> Path:
    """``results_figure`` written to ``path``: PNG at 1280 px wide, or a vector PDF / SVG by suffix.
    The caption names the date and the suite's commit."""
    caption = (f"tools/make_tables.py, {time.strftime('%Y-%m-%d')}, suite commit {suite_commit()[:12]}. "
               "Filled: measured here; hollow: published. Error bars: sample std over seeds.")
    return save_figure(results_figure(rows, caption), path, dpi=100)
