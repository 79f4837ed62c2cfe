"""The order picture on real bundled images, from an exported encoder."""
import numpy as np
import torch
from PIL import Image

from semaim_core import build_model
from semaim_core.export import export_encoder, semaim_from_encoder
from semaim_core.orders import ORDERS
from semaim_core.safe_io import save_atomic
from tools.lib.visualize import order_figure, order_maps, visualize


def test_order_picture_from_an_exported_encoder(tiny_coco, tmp_path):
    torch.manual_seed(0)
    model = build_model("semaim_vit_tiny_patch16", img_size=64, depth=2)
    save_atomic(export_encoder(model), tmp_path / "encoder.pth")

    loaded = semaim_from_encoder(tmp_path / "encoder.pth", img_size=96, name="semaim_vit_tiny_patch16")
    assert torch.equal(loaded.blocks[1].mlp.fc2.weight, model.blocks[1].mlp.fc2.weight)
    images = torch.randn(2, 3, 96, 96)
    maps = order_maps(loaded, images)
    assert list(maps) == ["S", *ORDERS]
    for name in ORDERS:  # every map is a permutation of the 36 ranks
        assert (np.sort(maps[name].reshape(2, -1), axis=1) == np.arange(36)).all()
    np.testing.assert_allclose(maps["S"].reshape(2, -1).sum(1), 1.0, rtol=1e-5)
    center = maps["S"].reshape(2, -1).argmax(1)
    assert (maps["semantic"].reshape(2, -1)[np.arange(2), center] == 0).all()  # the center comes first

    fig = order_figure(images, maps)  # one scale for S over every image, one for the orders' ranks
    bars = {ax.get_xlabel(): ax for ax in fig.axes if ax.get_xlabel()}
    assert set(bars) == {"S x N (1 = the uniform share)", "position in the order (36 patches)"}
    s_bar = bars["S x N (1 = the uniform share)"].get_xlim()
    np.testing.assert_allclose(s_bar, (36 * maps["S"].min(), 36 * maps["S"].max()), rtol=1e-5)
    ranks = bars["position in the order (36 patches)"]
    assert [t.get_text() for t in ranks.get_xticklabels()] == ["predicted first", "predicted last"]
    fig.clf()

    out = visualize([tiny_coco / "val2017"], tmp_path / "encoder.pth", tmp_path / "orders.png", img_size=64,
                    max_images=2)
    with Image.open(out) as im:
        assert im.width > 3 * im.height  # one row per image, seven panels per row
