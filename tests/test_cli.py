"""The command lines as users type them: bare config names, help on every flag, bad values refused
at parse time, --help on the shell scripts, make help."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_bare_config_names_resolve_in_the_framework_folders():
    from semaim_core.configs import resolve_config
    from semaim_core.errors import SettingError

    assert resolve_config("vitdet_semaim.py", REPO / "det/configs") == str(REPO / "det/configs/vitdet_semaim.py")
    assert resolve_config("upernet_semaim", REPO / "seg/configs") == str(REPO / "seg/configs/upernet_semaim.py")
    assert resolve_config(str(REPO / "det/configs/vitdet_semaim.py"), REPO / "seg/configs").endswith("vitdet_semaim.py")
    with pytest.raises(SettingError, match=r"'vitdet_semaim_xl.py' is neither a file nor one of the configs in .*"
                                         r"vitdet_semaim.py, vitdet_semaim_ablation.py"):
        resolve_config("vitdet_semaim_xl.py", REPO / "det/configs")


DET_ARGS = ["--config", "vitdet_semaim.py", "--eval-only", "train.init_checkpoint=nothing.pth", "train.device=cpu"]


@pytest.mark.slow
@pytest.mark.xdist_group("default_output_dirs")  # they share the repo's output/ and work_dirs/: one at a time
@pytest.mark.parametrize("command", [["det/train_net.py", *DET_ARGS], ["-m", "det.train_net", *DET_ARGS],
                                     ["seg/tools/train.py", "upernet_semaim.py"],
                                     ["-m", "seg.tools.train", "upernet_semaim.py"]])
def test_the_briefs_literal_commands_find_their_config(command, tmp_path):
    """Run as a file (the brief's entry points) or as a module (the README's form), from the repo
    root the bare names load; the run then stops at the missing dataset or weights, with an error
    that names them, not at a missing config file or module."""
    proc = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    err = proc.stderr[-3000:]
    assert "No such file or directory: 'vitdet_semaim.py'" not in err and "upernet_semaim.py' does not exist" not in err
    assert re.search(r"ADEChallengeData2016|coco/\{annotations|nothing.pth", err), err


@pytest.mark.slow
def test_every_pretraining_flag_has_help_and_enumerations_are_checked():
    from semaim_core.pretrain import parse_args

    proc = subprocess.run([sys.executable, "-m", "semaim_core.pretrain", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    flags = re.findall(r"^  (--[a-z-]+)", proc.stdout, flags=re.M)
    assert len(flags) >= 40
    for flag in flags:  # each option line (or the one after it) carries a description
        block = proc.stdout.split(f"  {flag}", 1)[1].split("\n  --", 1)[0]
        assert len(re.sub(r"[{}\[\],A-Z_ ]|\n", "", block.split("\n", 1)[-1] if "\n" in block else block)) > 5, flag
    for bad in (["--order", "spiral"], ["--attention", "flash"], ["--dtype", "fp8"], ["--target", "mae"],
                ["--similarity-source", "cls"], ["--similarity-precision", "fp16"]):
        with pytest.raises(SystemExit):
            parse_args(["--data", "x", "--output-dir", "y", *bad])


@pytest.mark.slow
@pytest.mark.parametrize("script,expected", [("tools/setup_env.sh", "bash tools/setup_env.sh"),
                                             ("tools/demo.sh", "make demo"),
                                             ("tools/pretrain.sh", "--similarity-precision"),
                                             ("tools/gpu_check.sh", "LIMIT"), ("tools/gpu_carry.sh", ".gpu_site")])
def test_shell_scripts_print_usage_instead_of_starting(script, expected):
    proc = subprocess.run(["bash", script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and expected in proc.stdout, proc.stdout[:500] + proc.stderr[-500:]
    assert "==> [" not in proc.stdout  # nothing started


def test_make_help_lists_the_targets():
    proc = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    targets = [line.split()[0] for line in proc.stdout.splitlines()]
    assert targets == ["help", "setup", "data", "demo", "test", "test-fast", "test-real-size", "clean-data"]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["semaim-pretrain", "semaim-convert", "semaim-tables", "semaim-orders",
                                     "semaim-benchmark", "semaim-parity"])
def test_installed_commands_run_from_any_directory(command, tmp_path):
    exe = Path(sys.executable).parent / command
    assert exe.is_file(), f"{exe} missing: the editable install declares console scripts (pyproject.toml)"
    proc = subprocess.run([str(exe), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: {command}"), proc.stderr[-1000:]


@pytest.mark.parametrize("driver,torch_cuda,rc", [("535.104.05", "", 3), ("535.104.05", "cu126", 0),
                                                  ("580.65.06", "", 0), ("520.61.05", "cu128", 3), (None, "", 0)])
def test_setup_refuses_a_torch_build_the_driver_cannot_run(tmp_path, driver, torch_cuda, rc):
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if driver:
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\necho {driver}\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    path = f"{bin_dir}:/usr/bin:/bin"  # no real nvidia-smi here: only the fake one, if any
    proc = subprocess.run(["bash", "tools/setup_env.sh", "--check-driver"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PATH=path, TORCH_CUDA=torch_cuda), timeout=60)
    assert proc.returncode == rc, proc.stdout + proc.stderr
    if driver:
        assert f"NVIDIA driver {driver}" in proc.stdout
    if rc:
        assert "make setup TORCH_CUDA=cu126" in proc.stderr
    if driver is None:
        assert "torch will run on the CPU" in proc.stdout


SRUN = """#!/bin/bash
# srun as a 2-node allocation runs it: its command once per task, with the task's SLURM variables
echo "srun $*" >> "$RECORD"
per_node=1
while [[ $1 == --* ]]; do [[ $1 == --ntasks-per-node=* ]] && per_node=${1#*=}; shift; done
for node in 0 1; do for task in $(seq 0 $((per_node - 1))); do
  SLURM_NODEID=$node SLURM_PROCID=$((node * per_node + task)) SLURM_LOCALID=$task SLURM_NTASKS=$((2 * per_node)) "$@"
done; done
"""
PYTHON = '#!/bin/sh\necho "node $SLURM_NODEID task $SLURM_PROCID: $*" >> "$RECORD"\n'
SCONTROL = "#!/bin/sh\necho node017\nseq -f node%03g 18 20000\n"  # long: reading one line would SIGPIPE


def run_as_slurm_does(script, args, tmp_path):
    """The batch script copied to a spool folder and run from there, as slurmd runs it, in a 2-node
    allocation of 8 GPUs each submitted from the repository; what each task would run, in order."""
    import os

    bin_dir, spool = tmp_path / "bin", tmp_path / "spool" / "job1234"
    for folder in (bin_dir, spool):
        folder.mkdir(parents=True)
    for name, text in (("srun", SRUN), ("python", PYTHON), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (spool / "slurm_script").write_text((REPO / "tools" / "slurm" / script).read_text())
    record = tmp_path / "record.txt"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=str(bin_dir / "python"), RECORD=str(record),
               SLURM_NNODES="2", SLURM_GPUS_ON_NODE="h100:8", SLURM_JOB_NODELIST="node[017-018]",
               SLURM_JOB_ID="1234", SLURM_SUBMIT_DIR=str(REPO))
    proc = subprocess.run(["bash", str(spool / "slurm_script"), *args], cwd=spool, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return record.read_text().splitlines()


def test_pretraining_under_sbatch_runs_torchrun_once_per_node(tmp_path):
    lines = run_as_slurm_does("pretrain.sbatch", ["--preset", "base", "--output-dir", "runs/b"], tmp_path)
    assert lines[0].startswith("srun --ntasks-per-node=1 bash -c")
    assert lines[1:] == [f"node {n} task {n}: -m torch.distributed.run --nnodes 2 --nproc_per_node 8 --node_rank {n} "
                         "--master_addr node017 --master_port 21234 -m semaim_core.pretrain --preset base "
                         "--output-dir runs/b" for n in (0, 1)]


def test_detection_under_sbatch_runs_detectron2s_launcher_once_per_node(tmp_path):
    lines = run_as_slurm_does("det.sbatch", ["--config", "vitdet_semaim.py", "train.max_iter=10"], tmp_path)
    assert lines[1:] == [f"node {n} task {n}: -m det.train_net --num-gpus 8 --num-machines 2 --machine-rank {n} "
                         "--dist-url tcp://node017:21234 --config vitdet_semaim.py train.max_iter=10" for n in (0, 1)]


def test_segmentation_under_sbatch_runs_one_task_per_gpu(tmp_path):
    lines = run_as_slurm_does("seg.sbatch", ["upernet_semaim.py", "--work-dir", "work_dirs/b"], tmp_path)
    assert lines[0].startswith("srun --ntasks-per-node=8 --kill-on-bad-exit=1")
    assert lines[1:] == [f"node {t // 8} task {t}: -m seg.tools.train upernet_semaim.py --work-dir work_dirs/b "
                         "--launcher slurm" for t in range(16)]


@pytest.mark.parametrize("script", ["pretrain.sbatch", "det.sbatch", "seg.sbatch"])
def test_a_batch_script_submitted_outside_the_suite_says_how_to_find_it(script, tmp_path):
    import os

    (tmp_path / "slurm_script").write_text((REPO / "tools" / "slurm" / script).read_text())
    env = dict(os.environ, SLURM_SUBMIT_DIR=str(tmp_path), SLURM_NNODES="2")
    proc = subprocess.run(["bash", str(tmp_path / "slurm_script")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "set SEMAIM_ROOT" in proc.stderr, proc.stderr


@pytest.mark.parametrize("nodes", ["2", "4"])
def test_dry_run_outside_an_allocation_prints_the_commands_for_a_stated_node_count(nodes, tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(DRY_RUN="1", NODES=nodes)
    proc = subprocess.run(["bash", "tools/slurm/pretrain.sbatch", "--preset", "base"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"for {nodes} nodes x 8 GPUs" in proc.stdout
    assert f"--nnodes {nodes} --nproc_per_node 8 --node_rank $SLURM_NODEID" in " ".join(proc.stdout.split())


@pytest.mark.slow
def test_a_baseline_runs_through_the_same_recipes(demo_encoder, tmp_path):
    """tools/baseline.sh: an MAE-layout release is converted, then sent through the very configs the
    README runs SemAIM with, and the row it prints is marked 'same harness'."""
    from semaim_core.safe_io import save_atomic

    mae = tmp_path / "mae_release.pth"
    save_atomic({"model": demo_encoder[1]}, mae)  # MAE's main_pretrain save: {"model": timm keys}
    env = dict(os.environ, OUT=str(tmp_path / "mae"), PYTHON=sys.executable, TASKS="convert",
               CONVERT_ARGS="--depth 4")  # ViT-Tiny's width with 4 blocks: the depth is said, not assumed
    proc = subprocess.run(["bash", "tools/baseline.sh", "mae", str(mae)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(mae)" in proc.stdout and (tmp_path / "mae" / "encoder.pth").is_file()
    dry = subprocess.run(["bash", "tools/baseline.sh", "mae", str(mae)], cwd=REPO, capture_output=True, text=True,
                         env=dict(env, TASKS="det seg lindepth ft lin attn knn", DRY_RUN="1", IMAGENET="/in1k",
                                  SEED="2"),
                         timeout=60)
    assert dry.returncode == 0, dry.stderr
    enc = tmp_path / "mae" / "encoder.pth"
    assert f"--config det/configs/vitdet_semaim.py --num-gpus 8 train.init_checkpoint={enc}" in dry.stdout
    assert f"seg/configs/upernet_semaim.py --launcher pytorch --work-dir {tmp_path}/mae/seg_s2" in dry.stdout
    assert f"lineardepth_semaim-vit-b16_8xb2-38400iters_nyu-416x544.py --launcher pytorch --work-dir " \
           f"{tmp_path}/mae/lindepth_s2" in dry.stdout
    assert "randomness.seed=2" in dry.stdout and "train.seed=2" in dry.stdout and "--seed 2" in dry.stdout
    assert '--row "mae (same harness)"' in dry.stdout
    assert f"-m cls.attnprobe --data /in1k --encoder {enc} --seed 2 --output-dir {tmp_path}/mae/cls_attn_s2" \
        in dry.stdout
    missing = subprocess.run(["bash", "tools/baseline.sh", "mae", str(mae)], cwd=REPO, capture_output=True,
                             text=True, env=dict(env, TASKS="ft", DRY_RUN="1"), timeout=60)
    assert missing.returncode == 2 and "task ft needs IMAGENET=" in missing.stderr


def test_the_pretraining_flags_are_built_from_the_settings_and_their_types():
    """Each ``recipe.Config`` field is a flag of its annotated type with its metadata's help; a type the
    builder cannot parse is an error when the parser is built (a list of ints never becomes a string)."""
    import argparse
    from dataclasses import dataclass

    from semaim_core.pretrain import add_arguments
    from semaim_core.recipe import setting

    @dataclass
    class Toy:
        sizes: list[int] = setting((1,), "sizes")
        limit: int | None = setting(None, "a limit")
        pair: tuple[float, float] = setting((0.9, 0.95), "a pair")
        on: bool = setting(False, "a switch")

    ap = argparse.ArgumentParser()
    add_arguments(ap, Toy, {})
    args = ap.parse_args(["--sizes", "3", "4", "--limit", "7", "--pair", "0.5", "0.25", "--on"])
    assert (args.sizes, args.limit, args.pair, args.on) == ([3, 4], 7, [0.5, 0.25], True)
    assert "a limit (default: None)" in ap.format_help()

    @dataclass
    class Odd:
        table: dict = setting(None, "no flag can hold this")

    with pytest.raises(TypeError, match="Odd.table: no command-line form for <class 'dict'>"):
        add_arguments(argparse.ArgumentParser(), Odd, {})


@pytest.mark.parametrize("module", ["cls.finetune", "cls.linprobe", "cls.attnprobe", "cls.knn", "seg.tools.train",
                                    "seg.tools.test", "tools.convert_checkpoint", "tools.make_tables", "tools.publish",
                                    "tools.submitit_train", "det.demo"])
def test_help_shows_every_options_default(module, capsys):
    import importlib

    mod = importlib.import_module(module)
    with pytest.raises(SystemExit):
        (getattr(mod, "parse_args", None) or mod.main)(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage:") and "(default: " in text, text[:300]


def test_knn_offers_no_flag_of_a_training_loop(capsys):
    from cls.knn import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--k " in text and not {"--stop-after-epochs", "--save-every", "--seed"} & set(text.split())


@pytest.mark.parametrize("entry", [["det/train_net.py"], ["-m", "det.demo"], ["-m", "seg.tools.train"],
                                   ["-m", "seg.tools.test"]], ids=" ".join)
def test_help_comes_before_any_third_party_warning(entry):
    """detectron2 (torch.jit.script at import) and mmcv-lite (a missing compiled op) warn at import:
    the usage is the first thing a user sees, and the frameworks' import warnings are not shown."""
    proc = subprocess.run([sys.executable, *entry, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage:"), proc.stdout[:300]
    assert proc.stderr == "", proc.stderr[:500]
