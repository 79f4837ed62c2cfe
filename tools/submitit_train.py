#!/usr/bin/env python
"""Submit a training to SLURM with submitit (as MAE's and DINO's submitit_*.py). When SLURM preempts
the job or its time limit nears (SIGUSR2, --signal-delay-s before the end), the job requeues itself,
and the requeued job resumes from the run's last checkpoint: the suite's resumes are exact, so the
run ends with the weights an uninterrupted one would have.

    python tools/submitit_train.py pretrain --nodes 4 --gpus-per-node 8 --partition learn --timeout-min 4320 \
        -- --preset base --data /data/imagenet/train --output-dir runs/semaim_b
    python tools/submitit_train.py det --nodes 2 -- --config vitdet_semaim.py \
        train.init_checkpoint=runs/semaim_b/encoder.pth train.output_dir=output/vitdet_semaim_b
    python tools/submitit_train.py seg --nodes 2 -- upernet_semaim.py --work-dir work_dirs/upernet_semaim_b \
        --cfg-options model.backbone.checkpoint=runs/semaim_b/encoder.pth
    python tools/submitit_train.py finetune --nodes 4 -- --data /data/imagenet \
        --encoder runs/semaim_b/encoder.pth --output-dir runs/ft_semaim_b

Arguments after ``--`` go to the training's own command line. ``--local`` runs the job on this
machine (submitit's local executor: the same signal, checkpoint and requeue, no SLURM).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

from semaim_core.errors import HelpFormatter, command, positive_int


@dataclass(frozen=True)
class Training:
    module: str  # its main(argv)
    one_task_per: str  # "gpu": the job's tasks are the processes; "node": the framework starts them
    on_requeue: tuple = ()  # what the command line adds to continue the run


TRAININGS = {
    "pretrain": Training("semaim_core.pretrain", "gpu"),  # resumes by default (--resume auto)
    "det": Training("det.train_net", "node", ("--resume",)),
    "seg": Training("seg.tools.train", "gpu", ("--resume",)),
    "finetune": Training("cls.finetune", "gpu"),  # the cls trainers continue a run of the same recipe
    "linprobe": Training("cls.linprobe", "gpu"),
    "attnprobe": Training("cls.attnprobe", "gpu"),
}


class Job:
    """What each task of the job runs; ``checkpoint`` is what submitit calls on SIGUSR2 (the run
    keeps its own checkpoints, so the requeued job only has to resume)."""

    def __init__(self, training: str, argv: list[str], gpus_per_node: int, resumed: bool = False):
        self.training, self.argv, self.gpus_per_node, self.resumed = training, list(argv), gpus_per_node, resumed

    def command_line(self, env) -> list[str]:
        """The training's arguments for this task (``env``: submitit's TorchDistributedEnvironment)."""
        spec = TRAININGS[self.training]
        argv = self.argv + list(spec.on_requeue if self.resumed else ())
        if self.training == "det":  # detectron2's launcher starts a process per GPU on each node
            nodes = env.world_size // env.local_world_size
            argv = ["--num-gpus", str(max(self.gpus_per_node, 1)), "--num-machines", str(nodes),
                    "--machine-rank", str(env.rank // env.local_world_size),
                    "--dist-url", f"tcp://{env.master_addr}:{env.master_port}", *argv]
        elif self.training == "seg":
            argv += ["--launcher", "pytorch" if env.world_size > 1 else "none"]
        return argv

    def __call__(self):
        import submitit

        env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        module = importlib.import_module(TRAININGS[self.training].module)
        argv = self.command_line(env)
        return (module.cli if hasattr(module, "cli") else command(module.main))(argv)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(Job(self.training, self.argv, self.gpus_per_node, resumed=True))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("training", choices=sorted(TRAININGS), help="what to train")
    ap.add_argument("--nodes", type=positive_int, default=1, help="SLURM nodes")
    ap.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (0: a CPU job of one task per node)")
    ap.add_argument("--timeout-min", type=positive_int, default=4320, help="the job's time limit, in minutes")
    ap.add_argument("--partition", help="the SLURM partition")
    ap.add_argument("--account", help="the SLURM account")
    ap.add_argument("--qos", help="the SLURM quality of service")
    ap.add_argument("--constraint", help="a SLURM node constraint (e.g. h100)")
    ap.add_argument("--cpus-per-task", type=positive_int, default=10, help="CPU cores per task (data loading)")
    ap.add_argument("--mem-gb", type=int, default=0, help="memory per node in GB (0: the partition's default)")
    ap.add_argument("--signal-delay-s", type=positive_int, default=120,
                    help="how long before the time limit SLURM signals the job to requeue itself")
    ap.add_argument("--max-requeues", type=int, default=3,
                    help="how many times the job may requeue at its time limit (preemptions do not count)")
    ap.add_argument("--job-dir", default="runs/submitit/%j", help="submitit's folder: the job's logs and pickles")
    ap.add_argument("--name", help="the job's name (default: semaim-<training>)")
    ap.add_argument("--local", action="store_true", help="run on this machine with submitit's local executor")
    ap.add_argument("args", nargs="*", help="after --: the training's own arguments")
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, theirs = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = ap.parse_args(ours)
    if args.args:
        ap.error(f"the training's arguments go after --: {' '.join(args.args)}")
    args.args = theirs
    return args


def executor_for(args):
    import submitit

    executor = submitit.AutoExecutor(folder=args.job_dir, cluster="local" if args.local else None,
                                     slurm_max_num_timeout=args.max_requeues, local_max_num_timeout=args.max_requeues)
    per_gpu = TRAININGS[args.training].one_task_per == "gpu"
    tasks = max(args.gpus_per_node, 1) if per_gpu else 1
    slurm = {f"slurm_{k}": v for k, v in dict(partition=args.partition, account=args.account, qos=args.qos,
                                                constraint=args.constraint).items() if v}
    executor.update_parameters(name=args.name or f"semaim-{args.training}", nodes=args.nodes,
                               gpus_per_node=args.gpus_per_node, tasks_per_node=tasks,
                               cpus_per_task=args.cpus_per_task * (1 if per_gpu else tasks), mem_gb=args.mem_gb or None,
                               timeout_min=args.timeout_min, slurm_signal_delay_s=args.signal_delay_s, **slurm)
    return executor


def main(argv=None):
    args = parse_args(argv)
    job = executor_for(args).submit(Job(args.training, args.args, args.gpus_per_node))
    print(f"submitted job {job.job_id} ({args.training}); its logs: {job.paths.stdout}")
    return job


cli = command(main)

if __name__ == "__main__":
    cli()
