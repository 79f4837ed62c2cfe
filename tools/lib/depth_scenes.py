"""Depth maps of known scenes, rendered over the bundled images, in NYU Depth v2's layout.

No bundled data has depth, so the depth protocol's checks use scenes whose depth is known exactly:
each is a 640 x 480 frame (NYU's) seen by a level pinhole camera with NYU's focal length, 1.2-1.5 m
above a floor that runs to a back wall 6-9.5 m away (each row's depth follows from the horizon's
row and the camera's height), the whole textured with one bundled image, and in front of it a
framed card at 1.0-2.2 m textured with another, its size on the image the focal length x its
width (0.35-0.5 m) / its depth. A head must read the room's geometry and find the card in the
features: a constant prediction scores far worse (the tests measure it).

Written as mmseg's ``NYUDataset`` expects: ``images/{train,test}/scene_NNNN.jpg`` and
``annotations/{train,test}/scene_NNNN.png``, 16-bit depth in millimetres.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

FRAME = (480, 640)      # NYU's (height, width)
FOCAL = 518.8           # NYU's Kinect colour camera, pixels
SPLITS = {"train2017": "train", "val2017": "test"}


def render_scene(wall: Image.Image, card: Image.Image, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, depth in metres float32) of one scene (see the module)."""
    h, w = FRAME
    image = np.array(wall.resize((w, h), Image.BICUBIC))
    horizon, camera_height, back = rng.uniform(0.35, 0.5) * h, rng.uniform(1.2, 1.5), rng.uniform(6.0, 9.5)
    rows = np.arange(h, dtype=np.float64)[:, None]
    floor = FOCAL * camera_height / np.maximum(rows - horizon, 1e-6)  # a row below the horizon meets the floor there
    depth = np.broadcast_to(np.minimum(floor, back), (h, w)).astype(np.float32).copy()  # ... or the back wall
    distance = rng.uniform(1.0, 2.2)
    card_w = int(round(FOCAL * rng.uniform(0.35, 0.5) / distance))
    card_h = min(h - 1, int(round(card_w * card.height / card.width)))
    x0, y0 = int(rng.integers(0, w - card_w)), int(rng.integers(0, h - card_h))
    face = np.array(card.resize((card_w, card_h), Image.BICUBIC))
    face[:4], face[-4:], face[:, :4], face[:, -4:] = 255, 255, 255, 255  # the card's white frame
    image[y0:y0 + card_h, x0:x0 + card_w] = face
    depth[y0:y0 + card_h, x0:x0 + card_w] = distance
    return image, depth


def write_scenes(images: dict[str, list[Image.Image]], out: Path, seed: int = 0) -> dict:
    """Scenes from each split's images (``{"train2017": [...], "val2017": [...]}``): scene i has
    image i on its wall and image i + 7 on its card. Returns the count per split."""
    counts = {}
    for split, pictures in images.items():
        name = SPLITS[split]
        (out / "images" / name).mkdir(parents=True)
        (out / "annotations" / name).mkdir(parents=True)
        for i, wall in enumerate(pictures):
            rng = np.random.default_rng([seed, i, len(name)])
            image, depth = render_scene(wall, pictures[(i + 7) % len(pictures)], rng)
            Image.fromarray(image).save(out / "images" / name / f"scene_{i:04d}.jpg", quality=95)
            Image.fromarray(np.round(depth * 1000).astype(np.uint16)).save(
                out / "annotations" / name / f"scene_{i:04d}.png")
        counts[name] = len(pictures)
    return counts
