import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")  # the CI machine has 2 cores

REPO = Path(__file__).resolve().parents[1]
TINY_COCO = REPO / "data" / "tiny_coco"


@pytest.fixture(scope="session")
def tiny_coco() -> Path:
    return TINY_COCO


@pytest.fixture(scope="session")
def derived(tmp_path_factory) -> Path:
    """The semantic maps and crops derived from the bundled tiny_coco, built once per session."""
    from semaim_core.coco_derive import derive

    out = tmp_path_factory.mktemp("derived")
    derive(TINY_COCO, out)
    return out
