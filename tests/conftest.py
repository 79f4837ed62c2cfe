"""What every test shares, and how the suite is scheduled.

- Markers: ``slow`` marks the end-to-end runs (minutes: the demo, the fit checks, trainings);
  ``slow(seconds=N)`` also gives a rough single-core time, used only for ordering (below);
  ``real_size`` marks the production-size check (``make test-real-size`` runs it alone).
- Ordering: in one process, the fast tests run first, for quick feedback. Under pytest-xdist
  (``make test``: ``-n 2 --dist loadgroup``) the slow tests go first, the longest first of all:
  the workers take tests from one queue, so starting the longest early keeps both busy until the end.
- ``xdist_group``: tests that share something outside ``tmp_path`` (the demo's one run, the
  repository's default ``output/`` and ``work_dirs/``) carry the same group, and ``--dist loadgroup``
  runs a group on one worker, one test after the other.
- Threads: each worker takes its share of the cores (``OMP_NUM_THREADS``), and so do the training
  runs a test starts in a subprocess.
"""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import mmengine.config.utils
import pytest
import torch

# The mmcv-lite compatibility layer goes in before any test module imports mmseg (an import sorter
# places `import seg` after the third-party mmseg imports inside each module).
import seg  # noqa: F401
from semaim_core.logs import setup_logging

_parse_file = mmengine.config.utils.load
_parsed: dict = {}


def parse_file_once(path, *args, **kwargs):
    """mmengine's file parser, keeping what it parsed per process, keyed by path, size and change time
    (a changed file is read again). Every ``mmseg::`` base of a config makes mmengine parse mmseg's
    whole model index (about 200 YAML metafiles, 2 s); the tests load configs hundreds of times."""
    if args or kwargs or not isinstance(path, str) or not os.path.isfile(path):
        return _parse_file(path, *args, **kwargs)
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _parsed:
        _parsed[key] = _parse_file(path)
    return copy.deepcopy(_parsed[key])


mmengine.config.utils.load = parse_file_once
setup_logging()  # as every entry point does: the suite's messages reach pytest's capture

# make test runs pytest-xdist workers (-n 2 on the 2-core CI machine): each takes its share of the
# cores, and the training runs a test starts in a subprocess inherit that share
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER") or not getattr(config.option, "numprocesses", None):
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // WORKERS)))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


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
    from semaim_core.safe_io import save_atomic

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
    """In one process the slow end-to-end tests (marked ``slow``) run after every fast one, for quick
    feedback. Under xdist they go first, the longest (``slow(seconds=N)``, a rough single-core
    time) first of all: the workers take tests from one queue, so both stay busy until the end."""
    def order(item):
        slow = item.get_closest_marker("slow")
        if WORKERS == 1:
            return slow is not None, 0
        return slow is None, -(slow.kwargs.get("seconds", 0) if slow else 0)  # slow(seconds=N): longest first

    items.sort(key=order)


def in_own_mount_namespace(script: str) -> subprocess.CompletedProcess:
    """Run the shell ``script`` in user and mount namespaces of its own (its mounts, a small tmpfs or a
    read-only bind mount, are seen by it alone), from the repository, with this Python first on PATH;
    the test is skipped where the kernel does not allow such namespaces."""
    unshare = ["unshare", "--user", "--map-root-user", "--mount"]
    probe = subprocess.run([*unshare, "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"no user and mount namespaces here ({probe.stderr.decode().strip()})")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run([*unshare, "sh", "-c", script], cwd=REPO, capture_output=True, text=True, env=env)


def step_rows(folder: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl, each checked against the one schema every trainer writes
    (``semaim_core.runlog.step_row``)."""
    rows = [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        assert {"step", "epoch", "loss", "losses", "lr", "time"} <= set(row), row
        assert isinstance(row["step"], int) and isinstance(row["loss"], float) and isinstance(row["losses"], dict)
    return rows
