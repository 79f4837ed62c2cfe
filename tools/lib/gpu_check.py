"""The GPU check: every owed speed figure and a GPU run of every entry point, in one process and
one call (tools/gpu_check.sh). detectron2 and mmseg are imported by the smoke stage alone, so the
benchmark stages run without the carried packages. Each stage appends its record to OUT/gpu_check.jsonl and its line
to OUT/gpu_check.txt as soon as it finishes, so a run stopped at its time limit still brings back
everything measured until then; a stage that fails records its error and the next one runs.

  exact      the default exact recipe against the authors' AimViT, eager, same process (>= 2.5x)
  fast       sorted, fast and (with torchao) fp8, compiled, with a profile (fast >= 1500 img/s, <= 20 GiB)
  jpeg       sorted compiled, from synthetic tensors and from JPEGs through --loader torch and gpu with
             15, 8 and 4 loader processes (gpu with 4: >= 0.95 of synthetic), and the gpu loader's
             feed alone with 4 (>= 3000 img/s)
  large      ViT-L/16, eager: img/s and peak memory
  smoke      every entry point on the bundled data, a few iterations each, mixed precision on a GPU:
             pretraining (10 steps + 5 resumed = 15 straight), det/train_net.py, seg/tools/train.py,
             cls.finetune, the converter to every format
  agreement  center agreement of the similarity pass in bf16 with fp32 on the val images, with an
             encoder pretrained --agree-steps steps (>= 99.5% to recommend the fast mode)
  plot       OUT/bench.png from OUT/bench.jsonl
  curve      (not in the default run) the agreement stage's pretraining again with --float8: FP8's
             cost in loss, OUT/loss.png
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import traceback
from pathlib import Path

import torch

from semaim_core.gpu_loader import LOADERS
from tools.lib import pretrain_benchmark
from tools.lib.benchmark import device_name, read_records

REPO = Path(__file__).resolve().parents[2]
TINY_COCO = REPO / "data" / "tiny_coco"
STAGES = ("exact", "fast", "jpeg", "large", "smoke", "agreement", "plot")
TARGETS = dict(official_ratio=2.5, fast_img_per_s=1500, fast_peak_gib=20, jpeg_ratio=0.95, gpu_feed_img_per_s=3000,
               agreement=0.995)


class Check:
    """The run's settings, scratch folder and output files."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.bench_json = self.out / "bench.jsonl"
        self.gpu = args.device == "cuda"

    def record(self, stage: str, seconds: float, line: str, ok: bool = True, met: bool | None = None, **details):
        """``ok``: the stage ran without an error; ``met``: its target was met (None: it has none)."""
        row = dict(stage=stage, ok=ok, met=met, seconds=round(seconds, 1), line=line, **details)
        with open(self.out / "gpu_check.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        verdict = "FAILED" if not ok else {True: "target met", False: "target missed", None: "ok"}[met]
        text = f"{stage}: {verdict} ({seconds:.0f} s): {line}"
        with open(self.out / "gpu_check.txt", "a") as f:
            f.write(text + "\n")
        print(f"==> [gpu check] {text}", flush=True)

    def bench(self, model: str, batch: int, *extra: str) -> list[dict]:
        """pretrain_benchmark's rows for ``extra`` (variants, compile, data), appended to bench.jsonl."""
        args = self.args
        argv = ["--model", model, "--batch", str(batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
                "--device", args.device, "--dtype", args.dtype, "--json", str(self.bench_json), *extra]
        return pretrain_benchmark.main(argv + (["--depth", str(args.depth)] if args.depth else []))

    def compile_flags(self) -> list[str]:
        return ["--compile"] if self.args.compile else []


def by_variant(rows: list[dict], data: str = "synthetic") -> dict:
    return {r["variant"]: r for r in rows if r["data"] == data}


def stage_exact(c: Check) -> dict:
    if not c.args.official:
        raise SystemExit("the exact stage needs --official PATH (a copy of the authors' code, carried to the device)")
    rows = by_variant(c.bench(c.args.model, c.args.batch, "--variants", "sorted", "official", "--official",
                              c.args.official))
    ratio = rows["sorted"]["img_per_s"] / rows["official"]["img_per_s"]
    line = (f"sorted {rows['sorted']['img_per_s']} img/s, official {rows['official']['img_per_s']} img/s: "
            f"{ratio:.2f}x (target >= {TARGETS['official_ratio']}x), eager, {c.args.model}, batch {c.args.batch}")
    return dict(line=line, met=ratio >= TARGETS["official_ratio"], ratio=round(ratio, 3))


def float8_missing() -> str | None:
    """Why FP8 cannot run here (torchao absent or not importable with this torch), or None."""
    try:
        import torchao.float8  # noqa: F401
    except Exception as e:  # noqa: BLE001  (any import failure means: no FP8 on this torch)
        return f"torchao.float8 does not import ({type(e).__name__}: {str(e)[:120]})"
    return None


def stage_fast(c: Check) -> dict:
    variants = ["sorted", "fast"]
    no_fp8 = float8_missing()
    if not no_fp8:
        variants.append("fp8")
    rows = by_variant(c.bench(c.args.model, c.args.batch, "--variants", *variants, *c.compile_flags(), "--profile"))
    fast = rows["fast"]
    line = (f"fast {fast['img_per_s']} img/s (target >= {TARGETS['fast_img_per_s']}), peak {fast['peak_mem_gib']} "
            f"GiB (<= {TARGETS['fast_peak_gib']}), MFU {fast['mfu']}; sorted {rows['sorted']['img_per_s']} img/s; "
            + (f"fp8 not measured: {no_fp8}" if no_fp8 else f"fp8 {rows['fp8']['img_per_s']} img/s")
            + f"; compile={'yes' if c.args.compile else 'no'}")
    met = fast["img_per_s"] >= TARGETS["fast_img_per_s"] and (fast["peak_mem_gib"] or 0) <= TARGETS["fast_peak_gib"]
    return dict(line=line, met=met, fp8=no_fp8 or "measured")


def stage_jpeg(c: Check) -> dict:
    """Training from the bundled JPEGs through both loaders, at each --jpeg-workers count, against
    synthetic tensors in the same run; and what the gpu loader alone feeds with the fewest workers."""
    images, workers = str(TINY_COCO / "train2017"), sorted(c.args.jpeg_workers, reverse=True)
    synthetic = c.bench(c.args.model, c.args.batch, "--variants", "sorted", *c.compile_flags())[0]["img_per_s"]
    rates = {(loader, w): c.bench(c.args.model, c.args.batch, "--variants", "sorted", *c.compile_flags(), "--data",
                                  images, "--workers", str(w), "--loader", loader)[0]["img_per_s"]
             for loader in LOADERS for w in workers}
    fewest = workers[-1]
    feed = pretrain_benchmark.main(["--loader-only", "--loader", "gpu", "--workers", str(fewest), "--device",
                                    c.args.device, "--batch", str(c.args.batch), "--loader-images",
                                    str(c.args.feed_images)])["loader_img_per_s"]
    ratio = rates["gpu", fewest] / synthetic
    line = (f"synthetic {synthetic} img/s; from JPEGs, " + "; ".join(
        f"--loader {loader}: " + ", ".join(f"{rates[loader, w]} ({w} workers)" for w in workers) for loader in LOADERS)
        + f"; gpu / synthetic with {fewest} workers {ratio:.3f} (target >= {TARGETS['jpeg_ratio']}); the gpu loader "
        f"alone feeds {feed:.0f} img/s with {fewest} workers (target >= {TARGETS['gpu_feed_img_per_s']})")
    met = ratio >= TARGETS["jpeg_ratio"] and feed >= TARGETS["gpu_feed_img_per_s"]
    return dict(line=line, met=met, ratio=round(ratio, 3), feed_img_per_s=round(feed, 1), synthetic=synthetic,
                jpeg={f"{loader} {w}": r for (loader, w), r in rates.items()})


def stage_large(c: Check) -> dict:
    row = c.bench(c.args.large_model, c.args.large_batch, "--variants", "sorted")[0]  # eager: no minute of compiling
    return dict(line=f"{c.args.large_model}, batch {c.args.large_batch}: {row['img_per_s']} img/s, "
                     f"peak {row['peak_mem_gib']} GiB, MFU {row['mfu']}")


def linked_images(folder: Path, source: Path, at_least: int) -> Path:
    """``folder`` of symbolic links to the JPEGs of ``source``, repeated until it holds ``at_least``."""
    files = sorted(source.glob("*.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(-(-at_least // len(files))):
        for f in files:
            link = folder / f"{i}-{f.name}"
            if not link.exists():
                link.symlink_to(f)
    return folder


def pretrain(c: Check, out: Path, steps: int, *extra: str, data: Path = TINY_COCO / "train2017",
             workers: int | None = None, save_every: int = 5) -> Path:
    """semaim_core.pretrain for ``steps`` steps into ``out``, every step logged; ``extra``: the recipe."""
    from semaim_core.pretrain import main

    main(["--data", str(data), "--output-dir", str(out), "--device", c.args.device, "--max-steps", str(steps),
          "--num-workers", str(min(c.args.workers, 4) if workers is None else workers), "--log-every", "1",
          "--save-every", str(save_every), "--keep", "1", *extra])
    return out


def smoke_pretrain(c: Check) -> str:
    """10 steps, then 5 more from the checkpoint: the losses and weights of 15 straight steps."""
    from semaim_core.safe_io import load_file

    recipe = ["--preset", "demo", "--dtype", c.args.dtype, "--epochs", "10"]  # 3 steps an epoch: 15 stop mid-schedule
    straight = pretrain(c, c.work / "pretrain_straight", 15, *recipe, "--resume", "none", "--overwrite")
    resumed = c.work / "pretrain"
    pretrain(c, resumed, 10, *recipe, "--resume", "none", "--overwrite")
    pretrain(c, resumed, 15, *recipe)

    def losses(run):
        return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}

    a, b = losses(straight), losses(resumed)
    if sorted(b) != list(range(1, 16)):
        raise AssertionError(f"the resumed run logged steps {sorted(b)}, not 1-15 once each")
    wa, wb = (load_file(run / "checkpoint-00000015.pth")["model"] for run in (straight, resumed))
    gap = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    loss_gap = max(abs(a[s] - b[s]) / abs(a[s]) for s in range(11, 16))
    if loss_gap > 1e-3 or gap > 1e-3:
        raise AssertionError(f"resumed != straight: loss gap {loss_gap:.2e}, largest weight gap {gap:.2e}")
    return f"pretraining 10 + 5 resumed = 15 straight ({'bit for bit' if gap == 0 else f'weights within {gap:.1e}'})"


def smoke_workers(c: Check) -> int:
    """Loader processes of the smoke runs: 2, as the demo runs them; none when --workers is 0 (the
    CPU test), where starting them would be most of a 2-iteration run."""
    return min(2, c.args.workers)


def smoke_det(c: Check, encoder: Path) -> str:
    from det.train_net import main, parse_args

    iters, out = str(c.args.smoke_iters), c.work / "det"
    main(parse_args(["--config", str(REPO / "det/configs/vitdet_semaim_tiny_coco.py"), "--overwrite",
                     f"train.init_checkpoint={encoder}", f"train.output_dir={out}", f"train.device={c.args.device}",
                     f"train.amp.enabled={c.gpu}", f"train.max_iter={iters}", f"train.eval_period={iters}",
                     f"train.checkpointer.period={iters}", "dataloader.test.dataset.names=tiny_coco_fit",
                     *(f"dataloader.{split}.num_workers={smoke_workers(c)}" for split in ("train", "test"))]))
    m = json.loads((out / "det_metrics.json").read_text())
    return f"det/train_net.py {iters} iterations{' with AMP' if c.gpu else ''}: box AP {m['bbox']['AP']:.1f}"


def smoke_seg(c: Check, encoder: Path, derived: Path) -> str:
    from seg.tools.train import main  # the seg package installs the mmcv-lite layer before mmseg loads

    iters, out = str(c.args.smoke_iters), c.work / "seg"
    root = derived / "coco_stuff"
    main([str(REPO / "seg/configs/upernet_semaim-vit-tiny_1xb4-100iters_tiny-coco-stuff-256x256.py"),
          "--work-dir", str(out), "--overwrite", *(["--amp"] if c.gpu else []), "--cfg-options",
          f"model.backbone.checkpoint={encoder}", f"train_cfg.max_iters={iters}", f"train_cfg.val_interval={iters}",
          f"default_hooks.checkpoint.interval={iters}", "val_dataloader.dataset.indices=8",
          *(f"{split}_dataloader.num_workers={smoke_workers(c)}" for split in ("train", "val", "test")),
          *(f"{split}_dataloader.dataset.data_root={root}" for split in ("train", "val", "test"))])
    m = json.loads((out / "seg_metrics.json").read_text())
    return f"seg/tools/train.py {iters} iterations{' with AMP' if c.gpu else ''}: mIoU {m['mIoU']:.1f}"


def smoke_cls(c: Check, encoder: Path, derived: Path) -> str:
    from cls.finetune import main

    result = main(["--data", str(derived / "crops"), "--encoder", str(encoder), "--output-dir", str(c.work / "cls"),
                   "--img-size", "96", "--batch-size", "32", "--num-workers", str(smoke_workers(c)),
                   "--device", c.args.device,
                   "--epochs", "1", "--warmup-epochs", "0", "--dtype", c.args.dtype, "--overwrite"])
    return f"cls.finetune 1 epoch ({c.args.dtype}): top-1 {result['top1']:.1f}"


def smoke_convert(c: Check, encoder: Path) -> str:
    from tools.convert_checkpoint import main

    formats = ("encoder", "timm", "detectron2", "mmseg")
    for fmt in formats:
        main([str(encoder), str(c.work / "converted" / f"{fmt}.pth"), "--to", fmt])
    return f"converter: {', '.join(formats)}"


def stage_smoke(c: Check) -> dict:
    from tools.lib.coco_derive import derive

    derived = c.work / "derived"
    derive(TINY_COCO, derived)
    encoder = c.work / "pretrain" / "encoder.pth"
    parts = {"pretrain": lambda: smoke_pretrain(c), "det": lambda: smoke_det(c, encoder),
             "seg": lambda: smoke_seg(c, encoder, derived), "cls": lambda: smoke_cls(c, encoder, derived),
             "convert": lambda: smoke_convert(c, encoder)}
    results = {}
    for name, run in parts.items():
        try:
            results[name] = dict(ok=True, line=run())
        except Exception as e:  # noqa: BLE001  (each entry point reports its own error; the others still run)
            traceback.print_exc()
            results[name] = dict(ok=False, line=f"{name}: {type(e).__name__}: {str(e)[:300]}")
        print(f"    smoke {name}: {'ok' if results[name]['ok'] else 'FAILED'}: {results[name]['line']}", flush=True)
    return dict(line="; ".join(r["line"] for r in results.values()), ok=all(r["ok"] for r in results.values()),
                parts=results)


def short_pretraining(c: Check, name: str, *extra: str) -> Path:
    """--agree-steps steps of --model on the train images (linked to fill 10 batches an epoch)."""
    steps = c.args.agree_steps
    images = linked_images(c.work / "train_images", TINY_COCO / "train2017", 10 * c.args.batch)
    return pretrain(c, c.work / name, steps, "--model", c.args.model, "--batch-size", str(c.args.batch), "--accum-iter",
                    "1", "--epochs", str(-(-steps // 10)), "--warmup-epochs", "1", "--dtype", c.args.dtype,
                    "--similarity-precision", "autocast", "--resume", "none", "--overwrite",
                    *(["--depth", str(c.args.depth)] if c.args.depth else []), *extra,
                    data=images, workers=c.args.workers, save_every=steps)


def stage_agreement(c: Check) -> dict:
    run = short_pretraining(c, "short_bf16")
    share = pretrain_benchmark.main(["--agreement-images", str(TINY_COCO / "val2017"), "--device", c.args.device,
                                     "--dtype", "bf16", "--model", c.args.model, "--agreement-checkpoint",
                                     str(run / "encoder.pth")])
    line = (f"{100 * share:.1f}% of the val images keep their fp32 center with the similarity pass in bf16 "
            f"(target >= {100 * TARGETS['agreement']}%), encoder pretrained {c.args.agree_steps} steps "
            f"({c.args.model})")
    return dict(line=line, met=share >= TARGETS["agreement"], share=share)


def stage_curve(c: Check) -> dict:
    """FP8's cost in loss: the agreement stage's run again with --float8, the curves compared."""
    from tools import compare_loss_curves

    missing = float8_missing()
    if missing:
        raise RuntimeError(f"no FP8 here: {missing}")
    reference = c.work / "short_bf16"
    if not (reference / "metrics.jsonl").is_file():
        reference = short_pretraining(c, "short_bf16")
    fp8 = short_pretraining(c, "short_fp8", "--float8")
    curves = {"bf16": compare_loss_curves.read_run(reference)[0], "fp8": compare_loss_curves.read_run(fp8)[0]}
    gap = compare_loss_curves.compare(curves, window=min(20, c.args.agree_steps))["fp8"]
    compare_loss_curves.plot(curves, c.out / "loss.png")
    return dict(line=f"fp8 loss / bf16 - 1 over {gap['shared_steps']} steps: mean {100 * gap['mean_gap']:+.2f}%, "
                     f"last {min(20, c.args.agree_steps)} steps {100 * gap['last_gap']:+.2f}% (loss.png)",
                mean_gap=gap["mean_gap"], last_gap=gap["last_gap"])


def stage_plot(c: Check) -> dict:
    if not c.bench_json.is_file():
        raise FileNotFoundError(f"{c.bench_json} does not exist: run a benchmark stage first")
    path = pretrain_benchmark.plot_records(read_records(c.bench_json), c.out / "bench.png")
    return dict(line=f"wrote {path.name}")


RUNNERS = dict(exact=stage_exact, fast=stage_fast, jpeg=stage_jpeg, large=stage_large, smoke=stage_smoke,
               agreement=stage_agreement, plot=stage_plot, curve=stage_curve)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stages", nargs="*", metavar="STAGE",
                    help=f"the stages to run, in the order given (default: {' '.join(STAGES)}; also: curve)")
    ap.add_argument("--out", default="runs/gpu_check", help="gpu_check.jsonl, gpu_check.txt, bench.jsonl, bench.png")
    ap.add_argument("--work", help="scratch folder for the stages' run directories (default: a new temporary one)")
    ap.add_argument("--official", help="a copy of the authors' SemAIM code (the exact stage)")
    ap.add_argument("--commit", default="unknown", help="the suite's commit, recorded in the first row")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="semaim_vit_base_patch16")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--large-model", default="semaim_vit_large_patch16")
    ap.add_argument("--large-batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per variant (compilation happens here)")
    ap.add_argument("--workers", type=int, default=15, help="loader processes (agreement)")
    ap.add_argument("--jpeg-workers", type=int, nargs="+", default=[15, 8, 4],
                    help="the loader process counts the jpeg stage measures each loader with")
    ap.add_argument("--feed-images", type=int, default=4096, help="images the jpeg stage's feed-alone figure reads")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="torch.compile in fast and jpeg (the others run eager: 300 eager steps cost less than "
                         "compiling them)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="autocast dtype of the steps")
    ap.add_argument("--depth", type=int, help="shrink every benchmarked model to this depth (the CPU test)")
    ap.add_argument("--smoke-iters", type=int, default=4, help="det and seg iterations in the smoke stage")
    ap.add_argument("--agree-steps", type=int, default=300, help="pretraining steps of the agreement encoder")
    args = ap.parse_args(argv)
    unknown = [s for s in args.stages if s not in RUNNERS]
    if unknown:
        ap.error(f"unknown stage {unknown[0]!r}: choose from {', '.join(RUNNERS)}")
    args.stages = args.stages or list(STAGES)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    c = Check(args)
    c.record("start", 0.0, f"{device_name(torch.device(args.device))}, torch {torch.__version__}, Python "
             f"{platform.python_version()}, suite commit {args.commit}, stages {' '.join(args.stages)}",
             settings=vars(args))
    failed = 0
    for stage in args.stages:
        tick = time.time()
        try:
            result = RUNNERS[stage](c)
        except (Exception, SystemExit) as e:  # a broken stage is reported, and the next one runs
            traceback.print_exc()
            result = dict(line=f"{type(e).__name__}: {str(e)[:500]}", ok=False)
        c.record(stage, time.time() - tick, **result)
        failed += not result.get("ok", True)
    return 1 if failed else 0
