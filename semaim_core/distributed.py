"""One process or many under torchrun (DDP): the few helpers the trainers share."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    """How many processes train together (torchrun's ``WORLD_SIZE``; 1 on its own), known before
    the process group starts: the lr scales with the effective batch."""
    return int(os.environ.get("WORLD_SIZE", 1))


def init_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; a single process otherwise."""
    world = world_size()
    rank = int(os.environ.get("RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but no GPU is visible: pass --device cpu (or --preset demo)")
    dev = torch.device(f"cuda:{local}" if device.startswith("cuda") else device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def all_reduce_mean(x: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= world
    return x
