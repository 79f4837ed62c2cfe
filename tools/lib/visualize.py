"""The paper's Fig. 2 for your own images: each image, its similarity map S, and the order in
which every autoregression order would predict its patches (warm = early)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from semaim_core import orders as O
from semaim_core.data import ImageDataset, eval_transform, find_images
from semaim_core.export import semaim_from_encoder
from semaim_core.orders import ORDERS
from tools.lib.figures import pyplot, save_figure


@torch.no_grad()
def order_maps(model, images: torch.Tensor, num_centers: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """{'S': the similarity map, order name: rank of each patch (0 = first)}, each B x h x w."""
    grid = model.grid(images)
    s = model.forward_similarity(images)
    g = torch.Generator(device=images.device).manual_seed(seed)
    maps = {"S": s.view(-1, *grid).cpu().numpy()}
    for name in ORDERS:
        c = O.make_order(name, images.shape[0], grid, images.device, s, lam=model.order_lambda,
                         smooth=model.order_smooth, num_centers=num_centers, generator=g)
        maps[name] = c.argsort(1).argsort(1).view(-1, *grid).cpu().numpy()
    return maps


def order_figure(images: torch.Tensor, maps: dict[str, np.ndarray], names: list[str] | None = None):
    """One row per image (labelled with ``names``): the image, S, then each order's ranks; a colour
    bar under S (one scale for every image) and one under the orders (first to last prediction).
    Both colour maps are perceptually uniform (viridis, cividis), so equal steps look equal."""
    plt = pyplot()

    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    cols = ["image", *maps]
    fig, axes = plt.subplots(len(images), len(cols), figsize=(2.2 * len(cols), 2.2 * len(images) + 0.9),
                             squeeze=False, layout="constrained")
    # S sums to 1 over the N patches: S x N reads 1 where a patch gets the uniform share
    patches = int(np.prod(maps["S"].shape[1:]))
    s, last = maps["S"] * patches, patches - 1
    for r, img in enumerate(images.cpu()):
        axes[r, 0].imshow((img * std + mean).clamp(0, 1).permute(1, 2, 0).numpy())
        s_image = axes[r, 1].imshow(s[r], cmap="viridis", vmin=s.min(), vmax=s.max(), interpolation="nearest")
        for c, name in enumerate(cols[2:], start=2):  # bright = predicted early
            ranks = axes[r, c].imshow(maps[name][r], cmap="cividis_r", vmin=0, vmax=last, interpolation="nearest")
        if names:
            axes[r, 0].set_ylabel(names[r], fontsize=9)
        for c, name in enumerate(cols):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                title = {"S": "similarity map S", "similarity": "similarity order"}.get(name, name.replace("_", "-"))
                axes[r, c].set_title(title, fontsize=10)
    bar = fig.colorbar(s_image, ax=axes[:, 1], location="bottom", shrink=0.9)
    bar.set_label("S x N (1 = the uniform share)", fontsize=9)
    bar = fig.colorbar(ranks, ax=axes[:, 2:], location="bottom", shrink=0.5, ticks=[0, last])
    bar.ax.set_xticklabels(["predicted first", "predicted last"])
    bar.set_label(f"position in the order ({last + 1} patches)", fontsize=9)
    return fig


def visualize(image_paths: list[str | Path], checkpoint: str | Path | None, out: str | Path, img_size: int = 224,
              num_centers: int = 2, max_images: int = 4) -> Path:
    files = []
    for p in image_paths:
        files += find_images(p) if Path(p).is_dir() else [Path(p)]
    ds = ImageDataset(files[:max_images], eval_transform(img_size))
    images = torch.stack([ds.transform(ds.load(i)) for i in range(len(ds))])
    model = semaim_from_encoder(checkpoint, img_size)
    names = [Path(f).name for f in files[:max_images]]
    return save_figure(order_figure(images, order_maps(model, images, num_centers), names), out)
