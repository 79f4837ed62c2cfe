"""Autoregression orders as per-patch scores C (B x N): smaller C is predicted earlier.

Every order here is continuous-valued apart from ``raster``, so ties have probability zero and the
sorted-causal attention of the model is exactly the dense-mask computation of the paper.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ORDERS = ("raster", "stochastic", "similarity", "semantic", "multi_center")
NEEDS_SIMILARITY = ("similarity", "semantic", "multi_center")


def similarity_map(tokens: torch.Tensor) -> torch.Tensor:
    """S = softmax over patches of cos(z_cls, z_i); ``tokens`` is B x (1 + N) x D, [CLS] first."""
    z = F.normalize(tokens.float(), dim=-1)
    cos = torch.einsum("bd,bnd->bn", z[:, 0], z[:, 1:])
    return cos.softmax(dim=-1)


def smooth3x3(s: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The paper's 3x3 mean filter on S (zero padding, as a plain average pool)."""
    b = s.shape[0]
    return F.avg_pool2d(s.view(b, 1, *grid), 3, stride=1, padding=1, count_include_pad=True).view(b, -1)


def grid_coords(grid: tuple[int, int], device) -> torch.Tensor:
    """(N, 2) float (row, col) of each patch in raster order."""
    rows, cols = torch.meshgrid(torch.arange(grid[0], device=device), torch.arange(grid[1], device=device), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=-1).float()


def raster(batch: int, grid: tuple[int, int], device) -> torch.Tensor:
    return torch.arange(grid[0] * grid[1], device=device, dtype=torch.float32).expand(batch, -1)


def stochastic(batch: int, grid: tuple[int, int], device, generator=None) -> torch.Tensor:
    return torch.rand(batch, grid[0] * grid[1], device=device, generator=generator)


def similarity(s: torch.Tensor) -> torch.Tensor:
    """Most similar to [CLS] first (the paper's 'similarity' ablation)."""
    return 1.0 - s


def centers_from_similarity(s: torch.Tensor, grid: tuple[int, int], k: int, min_separation: float) -> torch.Tensor:
    """Indices (B x k) of the k strongest peaks of S, each at least ``min_separation`` patches
    (Euclidean grid distance) from the ones picked before it. If the grid runs out of room,
    the remaining slots repeat the strongest peak."""
    coords = grid_coords(grid, s.device)
    scores = s.clone().float()
    picked = []
    for _ in range(k):
        idx = scores.argmax(dim=-1)
        exhausted = torch.isinf(scores.gather(1, idx[:, None])).squeeze(1)
        idx = torch.where(exhausted, picked[0] if picked else idx, idx)
        picked.append(idx)
        near = torch.cdist(coords[idx], coords) < min_separation  # B x N
        scores = scores.masked_fill(near, float("-inf"))
    return torch.stack(picked, dim=1)


def center_distance(centers: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """B x N Euclidean grid distance of every patch to its nearest center (centers: B x k indices)."""
    coords = grid_coords(grid, centers.device)
    return torch.cdist(coords[centers], coords).amin(dim=1)


def semantic(s: torch.Tensor, grid: tuple[int, int], lam: float = 1e-3, smooth: bool = False,
             generator=None) -> torch.Tensor:
    """SemAIM: distance to the center patch (argmax of S) plus lam * U(0,1) to break ties."""
    return multi_center(s, grid, k=1, lam=lam, smooth=smooth, generator=generator)


def multi_center(s: torch.Tensor, grid: tuple[int, int], k: int = 2, lam: float = 1e-3, smooth: bool = False,
                 min_separation: float | None = None, generator=None) -> torch.Tensor:
    """Distance to the nearest of k well-separated centers of S, plus lam * U(0,1).

    With lam < 1 every center (distance 0) precedes every other patch (distance >= 1)."""
    if smooth:
        s = smooth3x3(s, grid)
    if min_separation is None:
        min_separation = max(1.0, min(grid) / 4)
    centers = centers_from_similarity(s, grid, k, min_separation)
    d = center_distance(centers, grid)
    return d + lam * torch.rand(d.shape, device=d.device, generator=generator)


def make_order(name: str, batch: int, grid: tuple[int, int], device, s: torch.Tensor | None = None,
               lam: float = 1e-3, smooth: bool = False, num_centers: int = 2, generator=None) -> torch.Tensor:
    """Score C (B x N) for the named order; ``s`` (the similarity map) is needed by some orders."""
    if name not in ORDERS:
        raise ValueError(f"unknown order '{name}': choose one of {', '.join(ORDERS)}")
    if name in NEEDS_SIMILARITY and s is None:
        raise ValueError(f"order '{name}' needs the similarity map S")
    if name == "raster":
        return raster(batch, grid, device)
    if name == "stochastic":
        return stochastic(batch, grid, device, generator)
    if name == "similarity":
        return similarity(s)
    if name == "semantic":
        return semantic(s, grid, lam, smooth, generator)
    return multi_center(s, grid, num_centers, lam, smooth, generator=generator)
