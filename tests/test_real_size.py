"""Every production config at its real size on the CPU (tools/real_size_check.py): the base
pretraining preset and its export and conversions, every det config at 1024 px, every seg config at
512 px (slide inference on a 640 x 480 image), every cls entry point at 224 px, one training and one
evaluation step each. ``make test-real-size`` runs this alone; ``make test`` runs it with the rest,
on one worker, longest first (about 20 minutes on 2 cores beside the other tests)."""
import json
import os
import re

import pytest

from tools.lib.real_size import DET, DET_L, SEG, SEG_L, steps

pytestmark = [pytest.mark.slow(seconds=1000), pytest.mark.real_size]


def test_every_production_config_runs_at_its_real_size(tmp_path):
    from tools.real_size_check import main

    # a second pytest worker runs the other tests meanwhile: keep memory for it. Every core, not this
    # worker's share: the other worker ends long before this test, which then has the machine
    cores = str(len(os.sched_getaffinity(0)))
    status = main(["--work", str(tmp_path), "--out", str(tmp_path / "results.jsonl"), "--reserve-gib", "6",
                   "--threads", cores])
    rows = {r["step"]: r for r in map(json.loads, (tmp_path / "results.jsonl").read_text().splitlines())}
    failed = {name: r["detail"] for name, r in rows.items() if not r["ok"]}
    assert status == 0 and not failed, failed
    assert set(rows) == {s.name for s in steps()}
    for config in DET + SEG + SEG_L:  # each took its training step, its loss a number
        row = rows[f"{'det' if config in DET else 'seg'} train {config}"]
        assert row.get("trained", True) and 0 < row["loss"] < float("inf"), row
    for config in DET_L:  # a ViT-L detector trains where the memory is free; else it is built and loaded
        row = rows[f"det train {config}"]
        assert row["trained"] or "291 backbone tensors loaded" in row["detail"], row
    for config in DET + DET_L:
        detail = rows[f"det eval {config}"]["detail"]
        assert re.match(r"inference on 1 image: \d+ detections" if "lvis" in config else
                        r"COCO evaluation of 1 image", detail), detail
