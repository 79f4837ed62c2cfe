"""Autoregression orders as per-patch scores C (B x N): smaller C is predicted earlier.

Every order returns *strict ranks* (0 .. N - 1, as float32, never two patches equal). Ties matter:
in the paper's dense masks two tied patches see each other, which no single permutation (and so
not the sorted-causal attention of the model) can express. Ranks computed from an exact key are
tie-free on every image, so the sorted and dense paths of the model compute the same function.

The semantic order's key is the authors' ``distance + lambda * U(0, 1)``, evaluated in float64:
in float32 that sum ties on about 14% of ViT-B images (then the authors' masks let the tied
pair see each other); in float64 it orders equal distances by the uniform draw, i.e. a uniformly
random permutation within each distance shell, the distribution the authors intended. With the
same draw, our order equals the authors' argsort on every image where their float32 sum has no tie.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ORDERS = ("raster", "snake", "stochastic", "similarity", "semantic", "multi_center")
NEEDS_SIMILARITY = ("similarity", "semantic", "multi_center")
# Multi-center: a further center must be a local maximum of S whose min-max-normalized strength
# is at least this fraction of the strongest one, and at least ``min(grid) / 4`` patches away.
PEAK_RATIO = 0.8


def strict_ranks(key: torch.Tensor) -> torch.Tensor:
    """Rank of each entry of ``key`` (B x N) along dim 1, ties broken by patch index."""
    idx = key.argsort(dim=1, stable=True)
    ranks = torch.arange(key.shape[1], device=key.device, dtype=torch.float32).expand_as(idx)
    return torch.empty(idx.shape, device=key.device, dtype=torch.float32).scatter_(1, idx, ranks)


def similarity_map(tokens: torch.Tensor) -> torch.Tensor:
    """S = softmax over patches of cos(z_cls, z_i); ``tokens`` is B x (1 + N) x D, [CLS] first."""
    z = F.normalize(tokens.to(torch.promote_types(tokens.dtype, torch.float32)), dim=-1)
    cos = torch.einsum("bd,bnd->bn", z[:, 0], z[:, 1:])
    return cos.softmax(dim=-1)


def smooth3x3(s: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The paper's 3x3 mean filter on S; at the border it averages the valid neighbours only."""
    b = s.shape[0]
    return F.avg_pool2d(s.view(b, 1, *grid), 3, stride=1, padding=1, count_include_pad=False).view(b, -1)


def grid_coords(grid: tuple[int, int], device) -> torch.Tensor:
    """(N, 2) integer (row, col) of each patch in raster order."""
    rows, cols = torch.meshgrid(torch.arange(grid[0], device=device), torch.arange(grid[1], device=device),
                                indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=-1)


def raster(batch: int, grid: tuple[int, int], device) -> torch.Tensor:
    """Row-major order (the authors' ``zigzag``)."""
    return torch.arange(grid[0] * grid[1], device=device, dtype=torch.float32).expand(batch, -1)


def snake(batch: int, grid: tuple[int, int], device) -> torch.Tensor:
    """Boustrophedon: even rows left to right, odd rows right to left (the authors' ``raster``)."""
    rows, cols = grid_coords(grid, device).unbind(-1)
    c = rows * grid[1] + torch.where(rows % 2 == 1, grid[1] - 1 - cols, cols)
    return c.float().expand(batch, -1)


def stochastic(batch: int, grid: tuple[int, int], device, generator=None) -> torch.Tensor:
    """SAIM: a uniformly random permutation per image."""
    return strict_ranks(torch.rand(batch, grid[0] * grid[1], device=device, generator=generator))


def similarity(s: torch.Tensor) -> torch.Tensor:
    """Most similar to [CLS] first (the paper's 'similarity' ablation; the authors' C = 1 - S)."""
    return strict_ranks(-s.double())


def centers_from_similarity(s: torch.Tensor, grid: tuple[int, int], k: int, min_separation: float,
                            peak_ratio: float = PEAK_RATIO) -> torch.Tensor:
    """Indices (B x k) of the centers: the argmax of S first, then up to k - 1 further local maxima
    of S whose strength (S min-max normalized per image) is at least ``peak_ratio``, each at least
    ``min_separation`` patches (Euclidean) from the centers before it. Where an image has fewer
    such peaks its remaining slots repeat the first center, so it keeps fewer centers."""
    b = s.shape[0]
    smap = s.view(b, 1, *grid)
    is_peak = (smap == F.max_pool2d(smap, 3, stride=1, padding=1)).view(b, -1)
    lo, hi = s.amin(1, keepdim=True), s.amax(1, keepdim=True)
    strong = (s - lo) >= peak_ratio * (hi - lo)
    coords = grid_coords(grid, s.device).float()
    first = s.argmax(dim=1)
    picked = [first]
    scores = s.masked_fill(~(is_peak & strong), float("-inf"))
    for _ in range(k - 1):
        near = torch.cdist(coords[picked[-1]], coords) < min_separation  # B x N
        scores = scores.masked_fill(near, float("-inf"))
        idx = scores.argmax(dim=1)
        found = torch.isfinite(scores.gather(1, idx[:, None])).squeeze(1)
        picked.append(torch.where(found, idx, first))
    return torch.stack(picked, dim=1)


def center_distance(centers: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """B x N Euclidean grid distance (float64, exact for equal distances) of every patch to its
    nearest center (centers: B x k indices)."""
    coords = grid_coords(grid, centers.device)
    squared = ((coords[centers][:, :, None, :] - coords[None, None]) ** 2).sum(-1)  # B x k x N, integers
    return squared.amin(dim=1).double().sqrt()


def tie_break(distance: torch.Tensor, lam: float, generator=None) -> torch.Tensor:
    """Strict ranks of ``distance + lam * U(0, 1)`` (float64 key; see the module docstring)."""
    u = torch.rand(distance.shape, device=distance.device, generator=generator)
    return strict_ranks(distance.double() + lam * u.double())


def semantic(s: torch.Tensor, grid: tuple[int, int], lam: float = 1e-3, smooth: bool = False,
             generator=None) -> torch.Tensor:
    """SemAIM: distance to the center patch (argmax of S), equal distances in random order."""
    return multi_center(s, grid, k=1, lam=lam, smooth=smooth, generator=generator)


def multi_center(s: torch.Tensor, grid: tuple[int, int], k: int = 2, lam: float = 1e-3, smooth: bool = False,
                 min_separation: float | None = None, peak_ratio: float = PEAK_RATIO, generator=None) -> torch.Tensor:
    """Distance to the nearest of up to k centers of S (``centers_from_similarity``).

    With lam < 1 every center (distance 0) precedes every other patch (distance >= 1)."""
    if smooth:
        s = smooth3x3(s, grid)
    if min_separation is None:
        min_separation = max(1.0, min(grid) / 4)
    centers = centers_from_similarity(s, grid, k, min_separation, peak_ratio)
    return tie_break(center_distance(centers, grid), lam, generator)


def make_order(name: str, batch: int, grid: tuple[int, int], device, s: torch.Tensor | None = None,
               lam: float = 1e-3, smooth: bool = False, num_centers: int = 2, generator=None) -> torch.Tensor:
    """Strict ranks C (B x N) for the named order; ``s`` (the similarity map) is needed by some orders."""
    if name not in ORDERS:
        raise ValueError(f"unknown order '{name}': choose one of {', '.join(ORDERS)}")
    if name in NEEDS_SIMILARITY and s is None:
        raise ValueError(f"order '{name}' needs the similarity map S")
    if name == "raster":
        return raster(batch, grid, device)
    if name == "snake":
        return snake(batch, grid, device)
    if name == "stochastic":
        return stochastic(batch, grid, device, generator)
    if name == "similarity":
        return similarity(s)
    if name == "semantic":
        return semantic(s, grid, lam, smooth, generator)
    return multi_center(s, grid, num_centers, lam, smooth, generator=generator)
