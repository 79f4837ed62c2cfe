"""The suite against the authors' released code (tools/check_parity.py), when a checkout is at hand.

CI has it at ../shared/reference/semaim_official; a user's clone does not, and points
SEMAIM_OFFICIAL at their own checkout of github.com/skyoux/SemAIM."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = Path(os.environ.get("SEMAIM_OFFICIAL", REPO.parent / "shared" / "reference" / "semaim_official"))


@pytest.mark.slow
@pytest.mark.skipif(not (OFFICIAL / "models" / "models_semaim.py").is_file(),
                    reason=f"no official SemAIM checkout at {OFFICIAL} (set SEMAIM_OFFICIAL to a clone to run this)")
def test_parity_with_the_official_code(tmp_path):
    report = tmp_path / "parity.json"
    proc = subprocess.run([sys.executable, "-W", "ignore", str(REPO / "tools" / "check_parity.py"), "--official",
                           str(OFFICIAL), "--json", str(report)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = json.loads(report.read_text())["rows"]
    checks = {r["check"] for r in rows}
    assert {"forward", "train-float64", "train-float32", "dino", "clip"} <= checks
    assert all(r["ok"] for r in rows) and len(rows) >= 50
    assert any("after 4 steps" in r["what"] and "norm" in r["what"] for r in rows)
