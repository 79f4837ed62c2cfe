"""What a run writes as it goes (semaim_core.runlog.RunLog) and how the suite's messages print
(semaim_core.logs): the same for pretraining and the cls trainers."""
import json
import subprocess
import sys

import pytest

from semaim_core.runlog import RunLog


def run_log(folder, start=0, **kw):
    return RunLog(folder, rows="metrics", key="step", start=start, bar_start=start, total=4, desc="test",
                  tb_prefix="train", text_log=True, **kw)


def test_every_file_is_closed_when_the_run_fails(tmp_path):
    with pytest.raises(RuntimeError, match="a failed step"):
        with run_log(tmp_path) as log:
            opened = (log.file, log.text, log.tb)
            log.write(dict(step=1, loss=0.5), text="step 1  loss 0.5")
            raise RuntimeError("a failed step")
    assert opened[0].closed and opened[1].closed and opened[2].all_writers is None  # SummaryWriter.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == dict(step=1, loss=0.5)
    assert (tmp_path / "log.txt").read_text() == "step 1  loss 0.5\n"


def test_only_the_main_process_writes(tmp_path):
    with run_log(tmp_path / "rank1", main=False) as log:
        log.note("started")
        log.write(dict(step=1, loss=0.5), text="step 1")
        log.warn("the loss jumped")
        log.advance(loss="0.5")
    assert not (tmp_path / "rank1").exists()


def test_a_resumed_log_drops_what_a_killed_run_wrote_past_its_checkpoint(tmp_path):
    with run_log(tmp_path) as log:
        for step in (1, 2, 3):
            log.write(dict(step=step, loss=1.0 / step), text=f"step {step}/4  loss {1.0 / step:.4f}")
    with run_log(tmp_path, start=2) as log:  # the checkpoint was at step 2
        log.write(dict(step=3, loss=0.3), text="step 3/4  loss 0.3000")
    assert [json.loads(r)["step"] for r in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert [line.split()[1] for line in (tmp_path / "log.txt").read_text().splitlines()] == ["1/4", "2/4", "3/4"]


def test_a_warning_goes_to_stderr_and_log_txt(tmp_path, capsys):
    with run_log(tmp_path) as log:
        log.warn("WARNING: the loss jumped to 9.0")
    assert "WARNING: the loss jumped to 9.0" in capsys.readouterr().err
    assert (tmp_path / "log.txt").read_text() == "WARNING: the loss jumped to 9.0\n"


PRINT_FROM_RANK = """
import logging, sys
from semaim_core.logs import setup_logging
setup_logging(rank=int(sys.argv[1]))
setup_logging(rank=int(sys.argv[1]))  # a second call adds nothing
log = logging.getLogger("semaim_core.trainer")
log.info("resumed at step 4")
log.warning("skipping unreadable checkpoint")
"""


@pytest.mark.parametrize("rank, out", [(0, "resumed at step 4\n"), (1, "")])
def test_information_prints_on_rank_0_and_warnings_on_every_rank(rank, out):
    proc = subprocess.run([sys.executable, "-c", PRINT_FROM_RANK, str(rank)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == out and proc.stderr == "skipping unreadable checkpoint\n"
