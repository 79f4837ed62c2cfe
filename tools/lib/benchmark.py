"""What every benchmark of the suite shares: the step timer, the device's bf16 peak and the
profiler table. The pretraining, detection and segmentation benchmarks (tools/benchmark_*.py)
time their steps with ``time_steps``, so their figures mean the same thing."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

# bf16 dense tensor-core peaks (datasheet, no sparsity), TFLOP/s
PEAK_TFLOPS = {"H100 SXM": 989.4, "H100 PCIe": 756.5, "H100 NVL": 835.5, "H200": 989.4, "A100": 312.0}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def peak_tflops(name: str) -> float | None:
    name = name.upper()
    if "H100" in name:
        return PEAK_TFLOPS["H100 PCIe" if "PCIE" in name else "H100 NVL" if "NVL" in name else "H100 SXM"]
    for key, value in PEAK_TFLOPS.items():
        if key.upper() in name:
            return value
    return None


def time_steps(step, iters: int, warmup: int, device: torch.device, blocks: int = 5) -> dict:
    """Seconds per call of ``step`` after ``warmup`` untimed calls: the mean over ``iters`` calls,
    and the spread of the mean over ``blocks`` consecutive blocks of them (``s_per_iter_min`` /
    ``_max``); the peak memory while timing (GiB, CUDA only) and the last value ``step`` returned.
    The device is synchronised at each block's ends, not between calls, so that the host runs ahead
    of the GPU as it does in training. Not ``torch.utils.benchmark.Timer``: its ``timeit`` makes
    hidden warm-up calls before each measurement and runs on one thread unless told otherwise, which
    would change the number of steps a benchmark takes and its CPU figures."""
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    blocks = max(1, min(blocks, iters))
    means = []
    for size in (iters // blocks + (i < iters % blocks) for i in range(blocks)):
        start = time.perf_counter()
        for _ in range(size):
            last = step()
        sync()
        means.append(((time.perf_counter() - start) / size, size))
    return dict(s_per_iter=sum(m * n for m, n in means) / iters, s_per_iter_min=min(m for m, _ in means),
                s_per_iter_max=max(m for m, _ in means), last=last,
                peak_mem_gib=round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None)


def spread(timed: dict) -> dict:
    """``time_steps``' block spread as a record's fields, in milliseconds per step."""
    return {f"step_ms_{end}": round(1000 * timed[f"s_per_iter_{end}"], 1) for end in ("min", "max")}


def profile_step(step, steps: int = 3, rows: int = 25) -> str:
    """The top CUDA kernels of ``steps`` calls of ``step``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows)


def read_records(path: str | Path) -> list[dict]:
    """The JSON-lines records of ``append_records``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def append_records(path: str | Path | None, rows: list[dict]):
    """Append one JSON object per measured variant (JSON lines) to ``path``, if given."""
    if path:
        with open(path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
