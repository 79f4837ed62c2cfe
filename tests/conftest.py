import os
from pathlib import Path

import pytest

# The mmcv-lite compatibility layer goes in before any test module imports mmseg (an import sorter
# places `import seg` after the third-party mmseg imports inside each module).
import seg  # noqa: F401

os.environ.setdefault("OMP_NUM_THREADS", "2")  # the CI machine has 2 cores

REPO = Path(__file__).resolve().parents[1]
TINY_COCO = REPO / "data" / "tiny_coco"


@pytest.fixture(scope="session")
def tiny_coco() -> Path:
    return TINY_COCO


@pytest.fixture(scope="session")
def demo_encoder(tmp_path_factory):
    """An exported encoder of the demo's size (ViT-Tiny width, 4 blocks, 96 px), random weights:
    (path, encoder state dict)."""
    import torch

    from semaim_core import build_model
    from semaim_core.export import export_encoder
    from semaim_core.files import save_atomic

    torch.manual_seed(0)
    model = build_model("semaim_vit_tiny_patch16", img_size=96, depth=4)
    path = tmp_path_factory.mktemp("encoder") / "encoder.pth"
    record = export_encoder(model)
    save_atomic(record, path)
    return path, record["model"]


@pytest.fixture(scope="session")
def derived(tmp_path_factory) -> Path:
    """The semantic maps and crops derived from the bundled tiny_coco, built once per session."""
    from tools.lib.coco_derive import derive

    out = tmp_path_factory.mktemp("derived")
    derive(TINY_COCO, out)
    return out


def pytest_collection_modifyitems(config, items):
    """Slow end-to-end tests (marked ``slow``) run after every fast one."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)
