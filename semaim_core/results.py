"""Collect the metric files that the suite's runs write into the paper's tables.

A *row* is a name and the run directories that belong to one pretrained encoder: its
pretraining run (``config.json``), and any of det (``det_metrics.json``), seg
(``seg_metrics.json``) and cls (``cls_metrics.json``) runs. Every problem (a missing directory,
no metric file, a file that is not the expected JSON) is reported for its row, never dropped.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

# DESIGN.md section 5: published ViT-B/16 numbers (ImageNet-1k pretraining)
PUBLISHED = [
    dict(method="MAE", epochs=1600, top1=83.6, ap_box=50.3, ap_mask=44.9, miou=48.1),
    dict(method="SAIM", epochs=800, top1=83.9, ap_box=49.4, ap_mask=43.9, miou=47.8),
    dict(method="SemAIM", epochs=400, top1=83.8, ap_box=50.7, ap_mask=45.0, miou=None),
    dict(method="SemAIM", epochs=800, top1=84.1, ap_box=51.3, ap_mask=45.4, miou=48.0),
    dict(method="SemAIM, CLIP targets", epochs=800, top1=85.3, ap_box=None, ap_mask=None, miou=None),
]
COLUMNS = [("method", "method"), ("epochs", "epochs"), ("top1", "IN top-1 (ft)"), ("linprobe", "lin"),
           ("knn", "k-NN"), ("ap_box", "AP box"), ("ap_mask", "AP mask"), ("miou", "mIoU")]
SETTINGS = ("order", "target", "decoder_depth", "depth", "img_size", "similarity_source")


class MetricsError(ValueError):
    pass


@dataclass
class Row:
    method: str
    values: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    published: bool = False


def _read(path: Path, required: list[str]) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise MetricsError(f"{path}: not readable JSON ({e})") from e
    for key in required:
        node = data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise MetricsError(f"{path}: no '{key}' (is it a file the suite wrote?)")
            node = node[part]
    return data


def collect_dir(run: Path, row: Row) -> None:
    """Add what ``run`` holds to ``row``; problems go to ``row.problems``."""
    if not run.is_dir():
        row.problems.append(f"{run}: no such directory")
        return
    found = False
    readers = {
        "det_metrics.json": (["bbox.AP", "segm.AP"], lambda d: dict(ap_box=d["bbox"]["AP"], ap_mask=d["segm"]["AP"])),
        "seg_metrics.json": (["mIoU"], lambda d: dict(miou=d["mIoU"])),
        # fine-tuning top-1 is the table's "IN top-1"; linear probe and k-NN get columns of their own
        "cls_metrics.json": (["mode", "top1"], lambda d: {"top1" if d["mode"] == "finetune" else d["mode"]: d["top1"]}),
    }
    for name, (required, extract) in readers.items():
        path = run / name
        if path.is_file():
            found = True
            try:
                for key, value in extract(_read(path, required)).items():
                    if value is None:
                        row.problems.append(f"{path}: {key} is null (nothing could be scored)")
                    row.values[key] = value
            except MetricsError as e:
                row.problems.append(str(e))
    cfg = run / "config.json"
    if cfg.is_file():
        found = True
        try:
            c = _read(cfg, ["model", "epochs"])
            row.settings.update({k: c.get(k) for k in SETTINGS if k in c})
            row.settings["decoder_depth"] = c.get("decoder_depth") or c.get("depth")
            row.values.setdefault("epochs", c["epochs"])
        except MetricsError as e:
            row.problems.append(str(e))
    if not found:
        row.problems.append(f"{run}: none of det_metrics.json, seg_metrics.json, cls_metrics.json, config.json")


def collect(rows: list[tuple[str, list[str]]]) -> list[Row]:
    out = []
    for name, dirs in rows:
        row = Row(name)
        for d in dirs:
            collect_dir(Path(d), row)
        out.append(row)
    return out


def published_rows() -> list[Row]:
    return [Row(f"{r['method']} (published)", {k: v for k, v in r.items() if k != "method"}, published=True)
            for r in PUBLISHED]


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def table(rows: list[Row], fmt: str = "md", columns=COLUMNS) -> str:
    keys = [k for k, _ in columns if k == "method" or any(k in r.values for r in rows)]
    heads = [h for k, h in columns if k in keys]
    lines = [[r.method] + [_cell(r.values.get(k)) for k in keys[1:]] for r in rows]
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([heads, *lines])
        return buf.getvalue()
    if fmt == "latex":
        body = "\n".join(" & ".join(c.replace("_", r"\_") for c in line) + r" \\" for line in lines)
        return (f"\\begin{{tabular}}{{l{'r' * (len(heads) - 1)}}}\n\\toprule\n" + " & ".join(heads)
                + " \\\\\n\\midrule\n" + body + "\n\\bottomrule\n\\end{tabular}\n")
    out = ["| " + " | ".join(heads) + " |", "|" + "---|" + "---:|" * (len(heads) - 1)]
    return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines]) + "\n"


def ablation(rows: list[Row], fmt: str = "md") -> tuple[str, list[str]]:
    """Rows that differ in one pretraining setting (the paper's Tables 1-3): the varying settings
    become columns; a warning names any second setting that varies too."""
    keys = [k for k in SETTINGS if len({str(r.settings.get(k)) for r in rows}) > 1]
    warnings = []
    if not keys:
        warnings.append("the runs do not differ in any pretraining setting (order, target, decoder depth, ...)")
    elif len(keys) > 1:
        warnings.append(f"the runs differ in {len(keys)} settings at once ({', '.join(keys)}): not a one-factor ablation")
    shown = [Row(r.method, {**{k: r.settings.get(k) for k in keys}, **r.values}) for r in rows]
    cols = [("method", "run"), *[(k, k.replace("_", " ")) for k in keys], *COLUMNS[2:]]
    return table(shown, fmt, cols), warnings


def bar_chart(rows: list[Row], path: str | Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = [(k, h) for k, h in COLUMNS[2:] if any(r.values.get(k) is not None for r in rows)]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(metrics) * max(1, len(rows)) / 3), 4))
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        vals = [r.values.get(k) or 0.0 for k, _ in metrics]
        ax.bar(np.arange(len(metrics)) + i * width, vals, width, label=r.method, hatch="//" if r.published else None)
    ax.set_xticks(np.arange(len(metrics)) + width * (len(rows) - 1) / 2, [h for _, h in metrics])
    ax.set_ylabel("%")
    ax.legend(fontsize=7, ncols=2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
