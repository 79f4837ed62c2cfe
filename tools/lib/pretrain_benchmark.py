"""Throughput, memory and MFU of one full SemAIM pretraining step (similarity pass + forward +
backward + clip + AdamW), for several variants measured in the same run:

  sorted      the suite's default, exact recipe: sorted-causal attention, the similarity pass in
              fp32 outside autocast, TF32 off (as the official stack)
  fast        the same with the similarity pass in the step's autocast and TF32 on (opt-in)
  fp8         fast, with the blocks' matmuls in FP8 (torchao float8, --float8 in pretraining; opt-in)
  dense       explicit boolean masks through SDPA (the paper's formulation; the same function)
  dense-math  the dense masks through SDPA's math backend, which materializes the N x N scores
              like the authors' explicit-mask attention
  official    the authors' AimViT (--official PATH, a checkout of their code) as their
              main_pretrain.py runs it: fp32 similarity pass in eval mode, fp16 autocast + GradScaler

Images are synthetic tensors already on the device, or, with --data DIR, JPEGs read through the
pretraining loader, --loader torch (decoded and augmented in the loader processes) or gpu (decoded
and augmented on the device); the bundled images are repeated as often as the run needs.

    python tools/benchmark_pretrain.py --variants sorted fast official --official ../SemAIM --compile
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from timm.optim import param_groups_weight_decay
from torch.nn.attention import SDPBackend, sdpa_kernel

from semaim_core import MODEL_SIZES, MODELS, build_model
from semaim_core.data import ImageDataset, SeededSamples, find_images, pretrain_transform
from semaim_core.errors import HelpFormatter, command
from semaim_core.gpu_loader import LOADERS, EncodedSamples, Plan, pretraining_loader
from semaim_core.optim import build_optimizer
from semaim_core.training import AMP_DTYPES, autocast, grad_scaler, optimizer_step
from tools.lib.benchmark import (
    append_records,
    device_name,
    peak_tflops,
    profile_step,
    read_records,
    spread,
    time_steps,
)

VARIANTS = ("sorted", "fast", "fp8", "dense", "dense-math", "official")
FAST = ("fast", "fp8")  # the similarity pass in the step's autocast, TF32 on: not exact
CLIP = 3.0


def train_step_flops(cfg: dict, grid: tuple[int, int], target_dim: int) -> float:
    """Model FLOPs for one image and one training step (matmuls and attention; 2 per MAC).

    Causal attention counts the half of the score matrix that is computed. The no-grad
    similarity pass is a forward only; everything else costs forward + backward = 3 x forward."""
    d, L, Ld, p = cfg["embed_dim"], cfg["depth"], cfg["decoder_depth"], cfg["patch_size"]
    hidden = int(d * cfg["mlp_ratio"])
    n = grid[0] * grid[1]
    t = n + 1
    patch_embed = 2 * n * 3 * p * p * d
    block_linear = 2 * (3 * d * d + d * d + 2 * d * hidden)        # per token
    encoder_full = t * block_linear * L + 4 * t * t * d * L          # QK^T + AV over all pairs
    encoder_causal = t * block_linear * L + 2 * t * t * d * L
    decoder = Ld * (n * 2 * (d * d + d * d + 2 * d * hidden) + n * 2 * 2 * d * d + 2 * n * n * d)
    head = n * 2 * (d * 4 * d + 4 * d * target_dim)
    return (patch_embed + encoder_full) + 3 * (patch_embed + encoder_causal + decoder + head)


def check_equivalence(model_name: str, batch: int, img_size: int, device: str) -> float:
    """Relative difference of the fp32 loss between sorted and dense attention (same weights,
    images and order)."""
    torch.manual_seed(0)
    model = build_model(model_name, img_size=img_size).to(device)
    images = torch.randn(batch, 3, img_size, img_size, device=device)
    with torch.no_grad():
        order_scores, _ = model.make_order(images)
        losses = {}
        for attention in ("sorted", "dense"):
            model.attention = attention
            losses[attention] = model(images, order_scores=order_scores).loss.double()
    return float((losses["sorted"] - losses["dense"]).abs() / losses["dense"].abs())


@torch.no_grad()
def center_agreement(model, images: torch.Tensor, dtype: torch.dtype, batch: int = 32) -> float:
    """Fraction of images whose center (argmax of S) is the same with the similarity pass in
    ``dtype`` autocast (similarity_precision="autocast") as in fp32 (the default, the authors')."""
    same = 0
    for chunk in images.split(batch):
        centers = {}
        for precision in ("fp32", "autocast"):
            model.similarity_precision = precision
            with torch.autocast(chunk.device.type, dtype=dtype):
                centers[precision] = model.forward_similarity(chunk).argmax(1)
        same += int((centers["fp32"] == centers["autocast"]).sum())
    model.similarity_precision = "fp32"
    return same / len(images)


def image_source(data: str | None, batch: int, img_size: int, batches: int, workers: int, device: torch.device,
                 loader: str = "torch"):
    """A function returning the next batch on ``device``: one synthetic batch, or JPEGs from ``data``
    through the pretraining loader (``loader``: torch or gpu) with ``workers`` processes, the folder
    repeated so that one pass yields ``batches`` batches."""
    if not data:
        images = torch.randn(batch, 3, img_size, img_size, device=device)
        return lambda: images
    files = find_images(data)
    files = files * math.ceil(batch * batches / len(files))
    batches_iter = feed(files, img_size, batch, workers, device, loader)
    return lambda: next(batches_iter)[0].to(device, non_blocking=True)


def feed(files: list, img_size: int, batch: int, workers: int, device: torch.device, loader: str):
    """The pretraining loader's (images, skipped) batches of ``files`` in order, as the trainer builds it."""
    transform = pretrain_transform(img_size)
    keys = [(0, i) for i in range(len(files))]
    if loader == "gpu":
        return iter(pretraining_loader(ImageDataset(files, transform), 0, keys, batch, workers, 0, device))
    samples = SeededSamples(ImageDataset(files, transform), seed=0)
    return iter(torch.utils.data.DataLoader(samples, batch_size=batch, sampler=keys, num_workers=workers,
                                            pin_memory=device.type == "cuda", drop_last=True,
                                            persistent_workers=False, prefetch_factor=4 if workers else None))


def loader_throughput(data: str, img_size: int, images: int, workers: int, batch: int, loader: str = "torch",
                      device: torch.device = torch.device("cpu")) -> dict:
    """Feeding the model from the JPEGs of ``data``: images per second of one process (one core) for
    its share of the work (torch: decoding alone, then the whole transform; gpu: reading the bytes
    and drawing the crop), and the batches delivered on ``device`` by the loader with ``workers``
    processes (gpu: decoded and augmented there)."""
    files = find_images(data)
    files = (files * math.ceil(images / len(files)))[:images]
    transform = pretrain_transform(img_size)
    dataset = ImageDataset(files, transform)
    samples = EncodedSamples(files, Plan(transform), 0, max_image_pixels=dataset.max_image_pixels)
    torch.manual_seed(0)
    per_core = {"torch": (("decode", dataset.load), ("decode_transform", dataset.__getitem__)),
                "gpu": (("read_draw", lambda i: samples[(0, i)]),)}[loader]
    rates = {}
    for name, work in per_core:
        work(0)  # file cache and lazy imports warm
        start = time.perf_counter()
        for i in range(len(files)):
            work(i)
        rates[name] = len(files) / (time.perf_counter() - start)
    batches = feed(files, img_size, batch, workers, device, loader)
    start = time.perf_counter()
    n = 0
    for images, _ in batches:  # worker start-up included, as each epoch pays it
        n += len(images.to(device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    rates["loader"] = n / (time.perf_counter() - start)
    return rates


def compiled(model, mode: str | None):
    """``model`` under torch.compile (``mode`` "default" or one of torch's modes), or as is for None."""
    return torch.compile(model, mode=None if mode == "default" else mode) if mode else model


def suite_step(variant: str, model_name: str, img_size: int, amp, device: torch.device, compile_mode: str | None,
               model_kwargs: dict):
    """(step(images) -> loss, model) for one of the suite's variants."""
    model = build_model(model_name, img_size=img_size, attention="dense" if variant.startswith("dense") else "sorted",
                        similarity_precision="autocast" if variant in FAST else "fp32", float8=variant == "fp8",
                        **model_kwargs)
    model = model.to(device).train()
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95))
    scaler = grad_scaler(device, amp)
    net = compiled(model, compile_mode)
    math_only = variant == "dense-math"

    def step(images):
        with sdpa_kernel(SDPBackend.MATH) if math_only else contextlib.nullcontext(), autocast(device, amp):
            loss = net(images).loss
        scaler.scale(loss).backward()
        optimizer_step(optimizer, scaler, list(model.parameters()), CLIP)
        return loss

    return step, model


def official_step(official: str, model_name: str, img_size: int, device: torch.device, compile_mode: str | None,
                  depth: int | None = None):
    """(step(images) -> loss, model) for the authors' AimViT, as engines/engine_pretrain.py runs it:
    the similarity pass in eval mode and fp32, then the step in fp16 autocast with a GradScaler,
    their parameter groups and AdamW, gradient clipping at 3."""
    from tools.lib.official import build_aim, import_official

    off = import_official(Path(official).resolve())
    size = dict(MODEL_SIZES[model_name.removeprefix("semaim_vit_").removesuffix("_patch16")])
    size["depth"] = depth or size["depth"]
    model = build_aim(off, img_size=img_size, patch_size=16, mlp_ratio=4.0, **size).to(device)
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=1e-4, betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler(device.type)
    net = compiled(model, compile_mode)

    def step(images):
        model.eval()
        with torch.no_grad():
            _, attention, _ = model(images, forward_encoder=True)
        model.train()
        with torch.autocast(device.type, dtype=torch.float16):
            loss, _, _ = net(images, None, attention.detach())
        scaler.scale(loss).backward()
        optimizer_step(optimizer, scaler, list(model.parameters()), CLIP)
        return loss

    return step, model


def measure(variant: str, args, device: torch.device, data: str | None) -> dict:
    """One variant fed from ``data`` (None: synthetic tensors): build, warm up, time ``args.steps``
    steps, report img/s, ms/step, memory, MFU."""
    torch.manual_seed(0)
    exact = variant not in FAST
    if device.type == "cuda":  # the exact recipe keeps fp32 matmuls in fp32, as the official stack
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not exact
    amp = AMP_DTYPES[args.dtype]
    if variant == "official":
        if not args.official:
            raise SystemExit("the official variant needs --official PATH (a checkout of the authors' SemAIM code)")
        if args.img_size != 224:  # their center-search table is written for a 14 x 14 grid
            raise SystemExit(f"the official variant runs at --img-size 224 only (their code's fixed 14 x 14 grid), "
                             f"not {args.img_size}")
        step, model = official_step(args.official, args.model, args.img_size, device, args.compile, args.depth)
        dtype = "fp16"
    else:
        step, model = suite_step(variant, args.model, args.img_size, amp, device, args.compile, args.model_kwargs)
        dtype = f"{args.dtype}+fp8" if variant == "fp8" else args.dtype
    cfg = dict(MODELS[args.model], patch_size=16, mlp_ratio=4.0, **args.model_kwargs)
    cfg.pop("grad_checkpointing", None)
    cfg.setdefault("decoder_depth", cfg["depth"])
    flops = train_step_flops(cfg, (args.img_size // 16,) * 2, 3 * 16 * 16)
    batches = args.warmup + args.steps + (3 if args.profile else 0)
    next_images = image_source(data, args.batch, args.img_size, batches, args.workers, device, args.loader)
    timed = time_steps(lambda: step(next_images()), args.steps, args.warmup, device)
    if args.profile and device.type == "cuda":
        print(f"--- profile: {variant}, compile={args.compile}\n{profile_step(lambda: step(next_images()))}")
    ips = args.batch / timed["s_per_iter"]
    peak = peak_tflops(device_name(device))
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return dict(variant=variant, exact=exact, compile=args.compile or "no", model=args.model, batch=args.batch,
                grad_checkpointing=args.grad_checkpointing and variant != "official",
                img_size=args.img_size, dtype=dtype, data=data or "synthetic", device=device_name(device),
                loader=args.loader if data else None, workers=args.workers if data else None,
                img_per_s=round(ips, 1), step_ms=round(1000 * timed["s_per_iter"], 1),
                **spread(timed),
                peak_mem_gib=timed["peak_mem_gib"], tflops=round(flops * ips / 1e12, 1),
                mfu=round(flops * ips / 1e12 / peak, 3) if peak else None,
                loss=round(float(timed["last"].detach()), 4), command=args.command)


def plot_records(records: list[dict], path: str | Path) -> Path:
    """Bars of img/s and peak memory, one per measured record (variant, compile mode, data)."""
    from tools.lib.figures import pyplot, save_figure

    labels = [f"{r['variant']}\n{r['model'].removeprefix('semaim_vit_')}, b{r['batch']}"
              f"{', compiled' if r['compile'] != 'no' else ''}{', JPEG' if r['data'] != 'synthetic' else ''}"
              for r in records]
    fig, (speed, memory) = pyplot().subplots(1, 2, figsize=(max(7, 1.3 * len(records)), 4))
    speed.bar(range(len(records)), [r["img_per_s"] for r in records])
    memory.bar(range(len(records)), [r["peak_mem_gib"] or 0 for r in records])
    for ax, title in ((speed, "images / s (higher is better)"), (memory, "peak memory, GiB")):
        ax.set_xticks(range(len(records)), labels, fontsize=7, rotation=30, ha="right")
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"SemAIM pretraining step, {records[0]['device']}", fontsize=9)
    return save_figure(fig, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--model", default="semaim_vit_base_patch16", choices=sorted(MODELS), help="the encoder size")
    ap.add_argument("--batch", type=int, default=128, help="images per step")
    ap.add_argument("--img-size", type=int, default=224, help="input size")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="autocast dtype of the step")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--variants", nargs="+", default=["sorted", "dense"], choices=VARIANTS,
                    help="measured in the same run, in this order (see above)")
    ap.add_argument("--official", help="a checkout of the authors' SemAIM code, for the official variant")
    ap.add_argument("--data", help="a folder of JPEGs read through the pretraining loader (default: synthetic tensors)")
    ap.add_argument("--workers", type=int, default=8, help="data-loading processes for --data")
    ap.add_argument("--loader", default="torch", choices=LOADERS,
                    help="for --data and --loader-only: torch (decode and augment in the loader processes) or gpu "
                         "(they read bytes; the device decodes and augments)")
    ap.add_argument("--compare-synthetic", action="store_true",
                    help="with --data: measure each variant on synthetic tensors too, and print JPEG / synthetic")
    ap.add_argument("--grad-checkpointing", action="store_true",
                    help="recompute block activations in backward (the suite's variants; MFU still counts model FLOPs)")
    ap.add_argument("--depth", type=int, help="override the size's depth (encoder and decoder; CPU smoke runs)")
    ap.add_argument("--compile", nargs="?", const="default", default=None,
                    help="torch.compile the model (optionally a mode: max-autotune-no-cudagraphs, reduce-overhead)")
    ap.add_argument("--json", help="also append one JSON record per variant here (JSON lines)")
    ap.add_argument("--plot", help="also draw img/s and memory per variant (PNG): every record in --json, if given")
    ap.add_argument("--plot-only", action="store_true", help="draw --plot from the records in --json, measure nothing")
    ap.add_argument("--profile", action="store_true", help="print the top CUDA kernels of each variant")
    ap.add_argument("--check", action="store_true", help="first compare the fp32 loss of sorted and dense")
    ap.add_argument("--agreement-images", help="measure only the center agreement of the --dtype similarity pass with "
                    "the fp32 one, on the images of this folder (eval crops at --img-size)")
    ap.add_argument("--agreement-checkpoint", help="encoder weights for --agreement-images (default: random init)")
    ap.add_argument("--loader-only", action="store_true",
                    help="measure only the loader's CPU side on the JPEGs of --data (default: the bundled train "
                         "images): img/s per core and the cores 1500 img/s need")
    ap.add_argument("--loader-images", type=int, default=400, help="images read per --loader-only measurement")
    args = ap.parse_args(argv)
    if args.loader_only:
        data = args.data or str(Path(__file__).resolve().parents[2] / "data" / "tiny_coco" / "train2017")
        device = torch.device(args.device)
        rates = loader_throughput(data, args.img_size, args.loader_images, args.workers, args.batch, args.loader,
                                  device)
        per_core = rates["decode_transform" if args.loader == "torch" else "read_draw"]
        record = dict(variant="loader", loader=args.loader, data=data, img_size=args.img_size,
                      images=args.loader_images, workers=args.workers, device=device_name(device),
                      cpu=platform.processor() or platform.machine(),
                      cores_visible=len(os.sched_getaffinity(0)), torch_threads=torch.get_num_threads(),
                      **{f"{k}_img_per_s": round(v, 1) for k, v in rates.items()},
                      cores_for_1500=math.ceil(1500 / per_core), command=shlex.join(
                          ["python", "tools/benchmark_pretrain.py", *(sys.argv[1:] if argv is None else argv)]))
        work = "decodes + transforms" if args.loader == "torch" else "reads the bytes and draws the crop of"
        print(f"{args.loader} loader on {data} ({args.loader_images} images, {args.img_size} px): one core {work} "
              f"{per_core:.0f} img/s; {args.workers} loader processes deliver {rates['loader']:.0f} img/s on "
              f"{record['device']}; 1500 img/s need about {record['cores_for_1500']} cores like these")
        append_records(args.json, [record])
        return record
    if args.plot_only:
        if not (args.json and args.plot and Path(args.json).is_file()):
            ap.error("--plot-only draws --plot PNG from the records of an existing --json file: pass both")
        print(f"wrote {plot_records(read_records(args.json), args.plot)}")
        return []
    if args.agreement_images:
        from semaim_core.data import ImageDataset, eval_transform
        from semaim_core.export import semaim_from_encoder

        ds = ImageDataset(args.agreement_images, eval_transform(args.img_size))
        images = torch.stack([ds.transform(ds.load(i)) for i in range(len(ds))]).to(args.device)
        torch.manual_seed(0)
        model = semaim_from_encoder(args.agreement_checkpoint, args.img_size, args.model).to(args.device)
        share = center_agreement(model, images, AMP_DTYPES[args.dtype] or torch.float32)
        print(f"center agreement, similarity pass in {args.dtype} autocast vs fp32: {100 * share:.1f}% of "
              f"{len(images)} images ({args.model}, {args.agreement_checkpoint or 'random init'}, {args.device})")
        return share
    args.model_kwargs = dict(depth=args.depth, decoder_depth=args.depth) if args.depth else {}
    if args.grad_checkpointing:
        args.model_kwargs["grad_checkpointing"] = True
    args.command = shlex.join(["python", "tools/benchmark_pretrain.py", *(sys.argv[1:] if argv is None else argv)])
    if args.check:
        rel = check_equivalence(args.model, min(args.batch, 16), args.img_size, args.device)
        print(f"sorted vs dense fp32 loss, relative difference: {rel:.2e}")
    device = torch.device(args.device)
    feeds = [None, args.data] if args.data and args.compare_synthetic else [args.data]
    results = [measure(variant, args, device, data) for variant in args.variants for data in feeds]
    print(f"{'variant':<11} {'dtype':<8} {'compile':<9} {'data':<9} {'img/s':>8} {'ms/step':>8} {'peak GiB':>9} "
          f"{'TFLOP/s':>8} {'MFU':>6}")
    for r in results:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        feed = "synthetic" if r["data"] == "synthetic" else "JPEG"
        memory = r["peak_mem_gib"] if r["peak_mem_gib"] is not None else "n/a"
        print(f"{r['variant']:<11} {r['dtype']:<8} {r['compile'][:9]:<9} {feed:<9} {r['img_per_s']:>8} "
              f"{r['step_ms']:>8} {memory:>9} {r['tflops']:>8} {mfu:>6}")
    by = {(r["variant"], r["data"]): r["img_per_s"] for r in results}
    context = f"{results[0]['device']}, {args.model}, batch {args.batch}"
    pairs = (("sorted", "official"), ("sorted", "dense"), ("sorted", "dense-math"), ("fast", "sorted"), ("fp8", "fast"))
    for data in dict.fromkeys(r["data"] for r in results):
        for ours, ref in pairs:
            if (ours, data) in by and (ref, data) in by:
                print(f"{ours} / {ref} throughput: {by[ours, data] / by[ref, data]:.2f}x ({context}, {data} images)")
    if len(feeds) == 2:
        for variant in args.variants:
            print(f"{variant}: JPEG / synthetic throughput: {by[variant, args.data] / by[variant, 'synthetic']:.3f} "
                  f"({context}, --loader {args.loader}, {args.workers} loader processes; target >= 0.95)")
    append_records(args.json, results)
    if args.plot:
        records = read_records(args.json) if args.json else results
        print(f"wrote {plot_records(records, args.plot)}")
    return results


cli = command(main)  # the console script (pyproject.toml): bad input as one line, no traceback

if __name__ == "__main__":
    cli()
