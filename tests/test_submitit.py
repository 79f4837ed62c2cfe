"""tools/submitit_train.py: a job that SLURM signals (preemption, time limit) requeues itself and
ends with the weights of an uninterrupted run; the command line each task runs."""
import json
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from semaim_core.safe_io import load_file
from tools import submitit_train


def pretraining_flags(tiny_coco, out):
    return ["--data", str(tiny_coco / "train2017"), "--output-dir", str(out), "--model", "semaim_vit_tiny_patch16",
            "--img-size", "64", "--depth", "2", "--decoder-depth", "1", "--batch-size", "4", "--epochs", "4",
            "--warmup-epochs", "1", "--save-every", "4", "--log-every", "1", "--device", "cpu", "--num-workers", "0",
            "--dtype", "fp32"]


def signal_tasks(pid: int, sig):
    """Send ``sig`` to every task process under submitit's local controller ``pid`` (submitit's own
    ``LocalJob._interrupt`` signals the controller, which does not pass it on)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in map(int, children):
        if "submitit.core._submit" in Path(f"/proc/{child}/cmdline").read_text().replace("\0", " "):
            os.kill(child, sig)
        else:
            signal_tasks(child, sig)


def logged_steps(out):
    path = out / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.is_file() else []


def submit_locally(tmp_path, name, flags):
    return submitit_train.main(["pretrain", "--local", "--gpus-per-node", "0", "--timeout-min", "30",
                                "--job-dir", str(tmp_path / f"jobs_{name}"), "--", *flags])


@pytest.mark.slow(seconds=60)
def test_a_job_signalled_mid_run_requeues_itself_and_ends_as_the_uninterrupted_run(tiny_coco, tmp_path):
    signalled, straight = tmp_path / "signalled", tmp_path / "straight"
    job = submit_locally(tmp_path, "signalled", pretraining_flags(tiny_coco, signalled))
    reference = submit_locally(tmp_path, "straight", pretraining_flags(tiny_coco, straight))
    deadline = time.time() + 300
    while len(logged_steps(signalled)) < 6 and not job.done() and time.time() < deadline:
        time.sleep(0.02)
    assert not job.done(), "the run ended before it could be signalled: " + job.stderr()[-2000:]
    signal_tasks(job._process.pid, signal.SIGUSR2)  # as SLURM signals each task on preemption
    job.result(), reference.result()

    assert "Requeued job" in job.stderr() + job.stdout()
    text_log = (signalled / "log.txt").read_text()
    assert "resumed at step" in text_log  # the requeued job continued the run
    steps = logged_steps(straight)
    assert logged_steps(signalled) == steps == list(range(1, len(steps) + 1)) and len(steps) > 6  # each once
    a, b = load_file(signalled / "encoder.pth")["model"], load_file(straight / "encoder.pth")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def distributed(rank, world, per_node):
    return SimpleNamespace(rank=rank, world_size=world, local_world_size=per_node, master_addr="node017",
                           master_port=21234)


@pytest.mark.parametrize("training, resumed, rank, expected", [
    ("det", False, 8, ["--num-gpus", "8", "--num-machines", "2", "--machine-rank", "1", "--dist-url",
                       "tcp://node017:21234", "--config", "x.py"]),
    ("det", True, 0, ["--num-gpus", "8", "--num-machines", "2", "--machine-rank", "0", "--dist-url",
                      "tcp://node017:21234", "--config", "x.py", "--resume"]),
    ("seg", True, 3, ["--config", "x.py", "--resume", "--launcher", "pytorch"]),
    ("pretrain", True, 3, ["--config", "x.py"]),  # pretraining resumes by default
    ("finetune", True, 3, ["--config", "x.py"]),  # so does a cls run of the same recipe
])
def test_each_task_runs_its_trainings_command_line_and_a_requeue_adds_the_resume(training, resumed, rank, expected):
    job = submitit_train.Job(training, ["--config", "x.py"], gpus_per_node=8)
    if resumed:
        job = job.checkpoint().function
    per_node = 8 if submitit_train.TRAININGS[training].one_task_per == "gpu" else 1
    env = distributed(rank, 16 if per_node == 8 else 2, per_node)
    if training == "det":
        env = distributed(rank // 8, 2, 1)
    assert job.command_line(env) == expected


@pytest.mark.parametrize("restarts, taken", [(0, False), (1, True)])
def test_a_requeued_job_on_another_node_takes_over_its_earlier_starts_lock(restarts, taken, tmp_path, monkeypatch):
    """SLURM may requeue a job onto another node; the lock its earlier start left names a host whose
    pids cannot be checked from here, but the same job id with a lower restart count was ended by SLURM."""
    from semaim_core.rundir import RunDirError, acquire_lock, process_identity, release_lock

    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    earlier = dict(process_identity(), host="node017", pid=4242)  # written on node017 before the requeue
    (tmp_path / ".lock").write_text(json.dumps(earlier))
    monkeypatch.setenv("SLURM_RESTART_COUNT", str(restarts))
    if taken:
        acquire_lock(tmp_path)
        assert json.loads((tmp_path / ".lock").read_text())["slurm_job"] == ["1234", 1]
        release_lock(tmp_path)
    else:  # the same start of the job: a live process on another node
        with pytest.raises(RunDirError, match="in use by process 4242 on host node017"):
            acquire_lock(tmp_path)
