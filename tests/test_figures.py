"""The figures a paper takes from the suite: the results chart (error bars from the seeds, axes
scaled to the compared values, one dataset per panel, a caption naming the commit and date, PDF as
vector) and the order maps (a perceptually uniform colour map, one labelled row per image)."""
import numpy as np
import pytest
import torch

from tools.lib.results import Row, axis_range, results_chart, results_figure

CROPS, IMAGENET = "crops val", "ImageNet-1k val"


def rows():
    semaim = Row("SemAIM", values={("top1", IMAGENET): 84.1, ("top1", CROPS): 38.0},
                 spread={("top1", IMAGENET): (0.3, 3), ("top1", CROPS): (7.5, 3)})
    mae = Row("MAE", values={("top1", IMAGENET): 83.6}, spread={("top1", IMAGENET): (0.2, 3)})
    published = Row("MAE (published)", values={("top1", IMAGENET): 85.3}, published=True)
    return [semaim, mae, published]


def test_each_dataset_has_its_panel_with_error_bars_from_the_seeds_on_a_scaled_axis():
    fig = results_figure(rows(), caption="commit abc, 2026-12-04")
    axes = {ax.get_title(loc="left"): ax for ax in fig.axes if ax.get_title(loc="left")}
    assert set(axes) == {f"classification: top-1 (%), {IMAGENET}", f"classification: top-1 (%), {CROPS}"}
    imagenet = axes[f"classification: top-1 (%), {IMAGENET}"]
    lo, hi = imagenet.get_xlim()
    assert 80 < lo < 83.3 and 85.3 < hi < 88  # 83.6 vs 84.1 vs 85.3 stay apart: not a 0-100 axis
    spans = sorted(round(float(np.ptp(seg[:, 0])), 3) for c in imagenet.containers for bars in c[2]
                   for seg in bars.get_segments())
    assert spans == [0.4, 0.6]  # MAE's and SemAIM's 2 x std; the published row has no seeds, no bar
    labels = [t.get_text() for t in imagenet.get_yticklabels()]
    assert labels == ["SemAIM\nmeasured here", "MAE\nmeasured here", "MAE\npublished"]
    assert "84.1 ± 0.3 (3 seeds)" in [t.get_text() for t in imagenet.texts]
    assert fig._supxlabel.get_text() == "commit abc, 2026-12-04"


@pytest.mark.parametrize("points, expected", [([(50.0, None)], (49.0, 51.0)), ([(0.5, 2.0), (99.0, 3.0)], (0, 100))])
def test_the_axis_range_pads_the_compared_values_inside_0_100(points, expected):
    assert axis_range(points) == pytest.approx(expected)


def test_the_chart_is_a_vector_pdf_when_asked_and_names_its_commit(tmp_path):
    path = results_chart(rows(), tmp_path / "results.pdf")
    data = path.read_bytes()
    assert data.startswith(b"%PDF") and b"/Subtype /Image" not in data  # drawn, not a bitmap


def test_order_maps_use_a_perceptually_uniform_map_and_label_each_row():
    from tools.lib.visualize import order_figure

    images = torch.zeros(2, 3, 32, 32)
    maps = {"S": np.random.rand(2, 2, 2) / 4, "raster": np.tile(np.arange(4).reshape(2, 2), (2, 1, 1))}
    fig = order_figure(images, maps, names=["cat.jpg", "dog.jpg"])
    cmaps = {im.get_cmap().name for ax in fig.axes for im in ax.get_images()}
    assert "jet" not in " ".join(cmaps) and cmaps <= {"viridis", "cividis_r"}
    assert [fig.axes[r * 3].get_ylabel() for r in range(2)] == ["cat.jpg", "dog.jpg"]
