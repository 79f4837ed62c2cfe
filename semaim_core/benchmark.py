"""Throughput, memory and MFU of one full SemAIM training step (similarity pass + forward +
backward + clip + AdamW), for the sorted-causal and the dense-mask attention in the same run."""
from __future__ import annotations

import argparse
import json
import time

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import MODELS, build_model
from .optim import build_optimizer

# bf16 dense tensor-core peaks (datasheet, no sparsity), TFLOP/s
PEAK_TFLOPS = {"H100 SXM": 989.4, "H100 PCIe": 756.5, "H100 NVL": 835.5, "H200": 989.4, "A100": 312.0}


def peak_tflops(device_name: str) -> float | None:
    name = device_name.upper()
    if "H100" in name:
        return PEAK_TFLOPS["H100 PCIe" if "PCIE" in name else "H100 NVL" if "NVL" in name else "H100 SXM"]
    for key, value in PEAK_TFLOPS.items():
        if key.upper() in name:
            return value
    return None


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


def time_steps(step, iters: int, warmup: int, device: torch.device) -> dict:
    """Seconds per call of ``step`` (after ``warmup`` calls) and the peak memory while timing."""
    cuda = device.type == "cuda"
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    return dict(s_per_iter=round((time.perf_counter() - start) / iters, 4),
                peak_mem_gib=round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None)


def check_equivalence(model_name: str, batch: int, img_size: int, device: str) -> float:
    """Relative difference of the fp32 loss between sorted and dense attention (same weights,
    images and order)."""
    torch.manual_seed(0)
    model = build_model(model_name, img_size=img_size).to(device)
    images = torch.randn(batch, 3, img_size, img_size, device=device)
    with torch.no_grad():
        order, _ = model.make_order(images)
        losses = {}
        for attention in ("sorted", "dense"):
            model.attention = attention
            losses[attention] = model(images, order=order).loss.double()
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


def profile_step(step, steps: int = 3, rows: int = 25) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows)


def run(model_name: str, batch: int, img_size: int, dtype: str, device: str, steps: int, warmup: int,
        attentions: list[str], compile_mode: str | None, profile: bool = False) -> list[dict]:
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[dtype]
    dev = torch.device(device)
    results = []
    for attention in attentions:
        torch.manual_seed(0)
        # "dense-math": the dense masks through SDPA's math backend, which materializes the N x N
        # scores like the authors' explicit-mask attention does
        def kernel():
            return sdpa_kernel(SDPBackend.MATH) if attention == "dense-math" else contextlib.nullcontext()

        model = build_model(model_name, img_size=img_size, attention=attention.removesuffix("-math")).to(dev).train()
        optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95))
        scaler = torch.amp.GradScaler(dev.type, enabled=amp is torch.float16)
        step_fn = torch.compile(model, mode=None if compile_mode == "default" else compile_mode) if compile_mode else model
        images = torch.randn(batch, 3, img_size, img_size, device=dev)

        def step():
            with kernel(), torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = step_fn(images).loss
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            return loss

        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        for _ in range(warmup):
            step()
        sync()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        start = time.perf_counter()
        for _ in range(steps):
            loss = step()
        sync()
        elapsed = time.perf_counter() - start
        if profile and dev.type == "cuda":
            print(f"--- profile: {attention}, compile={compile_mode}\n{profile_step(step)}")
        grid = (img_size // 16, img_size // 16)
        flops = train_step_flops(model.config, grid, model.target.dim)
        ips = batch * steps / elapsed
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
        peak = peak_tflops(name)
        results.append(dict(
            attention=attention, compile=compile_mode or "no", model=model_name, batch=batch, img_size=img_size, dtype=dtype,
            device=name, img_per_s=round(ips, 1), step_ms=round(1000 * elapsed / steps, 1),
            peak_mem_gib=round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if dev.type == "cuda" else None,
            tflops=round(flops * ips / 1e12, 1), mfu=round(flops * ips / 1e12 / peak, 3) if peak else None,
            loss=round(float(loss.detach()), 4)))
        del model, optimizer, step_fn
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="semaim_vit_base_patch16", choices=sorted(MODELS), help="the encoder size")
    ap.add_argument("--batch", type=int, default=128, help="images per step")
    ap.add_argument("--img-size", type=int, default=224, help="input size")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="autocast dtype of the step")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--attention", nargs="+", default=["sorted", "dense"], choices=["sorted", "dense", "dense-math"],
                    help="variants measured in the same run (dense-math: materialized masks, like the authors')")
    ap.add_argument("--compile", nargs="?", const="default", default=None,
                    help="torch.compile the model (optionally a mode: max-autotune-no-cudagraphs, reduce-overhead)")
    ap.add_argument("--json", help="also write the results here (JSON lines)")
    ap.add_argument("--profile", action="store_true", help="print the top CUDA kernels of each variant")
    ap.add_argument("--check", action="store_true", help="first compare the fp32 loss of sorted and dense")
    ap.add_argument("--agreement-images", help="measure only the center agreement of the --dtype similarity pass with "
                    "the fp32 one, on the images of this folder (eval crops at --img-size)")
    ap.add_argument("--agreement-checkpoint", help="encoder weights for --agreement-images (default: random init)")
    args = ap.parse_args(argv)
    if args.agreement_images:
        from .data import ImageDataset, eval_transform
        from .visualize import model_from_checkpoint

        ds = ImageDataset(args.agreement_images, eval_transform(args.img_size))
        images = torch.stack([ds.transform(ds.load(i)) for i in range(len(ds))]).to(args.device)
        torch.manual_seed(0)
        model = model_from_checkpoint(args.agreement_checkpoint, args.img_size, args.model).to(args.device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
        share = center_agreement(model, images, dtype)
        print(f"center agreement, similarity pass in {args.dtype} autocast vs fp32: {100 * share:.1f}% of "
              f"{len(images)} images ({args.model}, {args.agreement_checkpoint or 'random init'}, {args.device})")
        return share
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.check:
        rel = check_equivalence(args.model, min(args.batch, 16), args.img_size, args.device)
        print(f"sorted vs dense fp32 loss, relative difference: {rel:.2e}")
    results = run(args.model, args.batch, args.img_size, args.dtype, args.device, args.steps, args.warmup,
                  args.attention, args.compile, args.profile)
    print(f"{'attention':<8} {'compile':<9} {'img/s':>8} {'ms/step':>8} {'peak GiB':>9} {'TFLOP/s':>8} {'MFU':>6}")
    for r in results:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"{r['attention']:<8} {r['compile'][:9]:<9} {r['img_per_s']:>8} {r['step_ms']:>8} "
              f"{r['peak_mem_gib'] if r['peak_mem_gib'] is not None else 'n/a':>9} {r['tflops']:>8} {mfu:>6}")
    by = {r["attention"]: r for r in results}
    for ref in ("dense", "dense-math"):
        if {"sorted", ref} <= set(by):
            print(f"sorted / {ref} throughput: {by['sorted']['img_per_s'] / by[ref]['img_per_s']:.2f}x "
                  f"({results[0]['device']}, {args.model}, batch {args.batch}, {args.dtype})")
    if args.json:
        with open(args.json, "a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    return results


if __name__ == "__main__":
    main()
