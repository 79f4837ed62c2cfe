"""Bad input at the command line: each entry point prints one line that names the input and the fix,
exits non-zero and leaves nothing behind (the break test's message rows). The entry points run as
the command line runs them (``errors.command``: a UserError becomes ``error: ...``, not a traceback)."""
import importlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import in_own_mount_namespace
from safetensors.torch import save_file

from semaim_core.errors import command
from semaim_core.safe_io import load_file

REPO = Path(__file__).resolve().parents[1]
TINY_SEG = "seg/configs/upernet_semaim-vit-tiny_1xb4-100iters_tiny-coco-stuff-256x256.py"


def det_main(argv):
    from det.train_net import main, parse_args

    return main(parse_args(argv))


def entry(module):
    if module == "det.train_net":
        return det_main
    return importlib.import_module(module).main


def seg_run_expecting_a_resume(t, derived):
    """A seg work dir whose run.json is the recipe of the command below and whose last_checkpoint is empty."""
    from seg.tools.common import load_config, parser, recipe
    from semaim_core.rundir import canonical, with_input_digests
    from semaim_core.safe_io import write_json_atomic

    work = t / "segwork"
    argv = [TINY_SEG, "--work-dir", str(work), "--resume", "--cfg-options", "model.backbone.checkpoint=None",
            *[f"{s}_dataloader.dataset.data_root={derived / 'coco_stuff'}" for s in ("train", "val", "test")]]
    ap = parser("")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--amp", action="store_true")
    cfg = load_config(ap.parse_args(argv))
    work.mkdir()
    write_json_atomic(work / "run.json", canonical(with_input_digests(recipe(cfg), ["model.backbone.checkpoint"])))
    (work / "last_checkpoint").write_text("")
    return argv


def cases(t: Path, enc: Path, derived: Path) -> dict:
    """name -> (module, argv, what the one line must say). ``t`` is the test's folder; ``enc`` a 4-block encoder."""
    (t / "afile").write_text("not a folder")
    pretrain = ["--preset", "demo", "--data", str(REPO / "data/tiny_coco/train2017"), "--max-steps", "1"]
    convert = lambda src: ("tools.convert_checkpoint", [str(src), str(t / "out.pth")])  # noqa: E731
    return {
        "--data is a file": ("semaim_core.pretrain", [*pretrain, "--data", str(t / "afile"), "--output-dir",
                                                      str(t / "run")],
                             r"data folder .*/afile is a file, not a folder: pass an ImageNet-style folder"),
        "--output-dir is a file": ("semaim_core.pretrain", [*pretrain, "--output-dir", str(t / "afile")],
                                   r"output directory .*/afile is a file, not a folder: name a folder"),
        "converter output is a folder": ("tools.convert_checkpoint", [str(enc), str(t)],
                                         r"the output .* is a folder: name the file to write \(e.g. .*encoder.pth\)"),
        "/dev/zero": (*convert("/dev/zero"), r"checkpoint /dev/zero is a character device, not a file"),
        "a FIFO": (*convert(t / "fifo"), r"checkpoint .*/fifo is a FIFO \(named pipe\), not a file"),
        "a symlink loop": (*convert(t / "loop1"), r"checkpoint .*/loop1 is a loop of symbolic links that never "
                                                  r"reaches a file: point the link at the checkpoint file"),
        "a protocol-4 pickle": (*convert(t / "p4.pth"), r"uses the pickle opcode FRAME \(149\), which the safe "
                                                        r"reader does not execute.*--trust-pickle"),
        "an object-dtype array": (*convert(t / "objects.pth"), r"holds an object of type numpy.dtypes.ObjectDType "
                                                               r"\(a numpy array of dtype object"),
        "an empty run.json": ("semaim_core.pretrain", [*pretrain, "--output-dir", str(t / "emptyrun")],
                              r"emptyrun/run.json is empty: the run's recorded recipe was damaged.*Restore it"),
        "a --config typo": ("semaim_core.pretrain", [*pretrain, "--output-dir", str(t / "run"), "--config",
                                                     str(t / "typo.json")],
                            r"--config .*typo.json: 'blrr' is not a setting; did you mean 'blr'\?"),
        "det train.max_iter=abc": ("det.train_net", ["--config", "det/configs/vitdet_semaim_tiny_coco.py",
                                                     f"train.output_dir={t / 'det'}", "train.init_checkpoint=none",
                                                     "train.max_iter=abc"],
                                   r"train.max_iter='abc': train.max_iter takes a whole number \(the config has"),
        "seg's empty last_checkpoint": ("seg.tools.train", seg_run_expecting_a_resume(t, derived),
                                        r"segwork/last_checkpoint is empty: write the name of a checkpoint of this "
                                        r"run into it \(e.g. iter_1000.pth\), or delete it"),
        "--probe-layers last6 on 4 blocks": (
            "cls.attnprobe", ["--data", str(derived / "crops"), "--encoder", str(enc), "--output-dir", str(t / "probe"),
                              "--probe-layers", "last6"],
            r"--probe-layers last6: blocks \[-2, -1, 0, 1, 2, 3\] do not fit an encoder of 4 blocks "
            r"\(0 to 3, each once\)"),
        "--lr-grid nan": ("cls.attnprobe", ["--data", str(derived / "crops"), "--encoder", str(enc), "--output-dir",
                                            str(t / "probe"), "--lr-grid", "1e-3", "nan"],
                          r"argument --lr-grid: nan is not a finite number above 0"),
        "publish --results without predictions": (
            "tools.publish", [str(t / "pretrain"), str(t / "hub"), "--results", str(t / "det_run")],
            r"det_run/det_metrics.json: the evaluation had no predictions to score \(the detector predicted "
            r"nothing on coco_2017_val"),
    }


def make_inputs(t: Path, enc: Path):
    os.mkfifo(t / "fifo")
    (t / "loop1").symlink_to(t / "loop2")
    (t / "loop2").symlink_to(t / "loop1")
    (t / "p4.pth").write_bytes(pickle.dumps({"model": {"w": [1.0]}}, protocol=4))
    torch.save({"model": load_file(enc)["model"], "x": np.array([1, "a"], dtype=object)}, t / "objects.pth")
    (t / "emptyrun").mkdir()
    (t / "emptyrun" / "run.json").write_text("")
    (t / "emptyrun" / "log.txt").write_text("step 1/10 ...\n")
    (t / "typo.json").write_text('{"blrr": 0.1}')
    (t / "pretrain").mkdir()
    (t / "pretrain" / "encoder.pth").write_bytes(enc.read_bytes())
    (t / "det_run").mkdir()
    from semaim_core.rundir import file_digest
    (t / "det_run" / "run.json").write_text(json.dumps({"train.init_checkpoint.sha256": file_digest(enc)}))
    nothing = {"bbox": dict.fromkeys(("AP", "AP50", "AP75")), "segm": {}}  # COCOEvaluator, no detections
    (t / "det_run" / "det_metrics.json").write_text(json.dumps(
        {"task": "det", "dataset": "coco_2017_val", "iteration": 10, **nothing, "provenance": {"iteration": 10}}))


def snapshot(folder: Path) -> dict:
    """Every path below ``folder`` and what it holds (a FIFO or a link loop by its kind)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        out[str(p.relative_to(folder))] = (p.read_bytes() if p.is_file() and not p.is_symlink() else
                                           "link" if p.is_symlink() else "dir" if p.is_dir() else "other")
    return out


CASE_NAMES = [  # the keys of cases(), listed here so that pytest can name each row
    "--data is a file", "--output-dir is a file", "converter output is a folder", "/dev/zero", "a FIFO",
    "a symlink loop", "a protocol-4 pickle", "an object-dtype array", "an empty run.json", "a --config typo",
    "det train.max_iter=abc", "seg's empty last_checkpoint", "--probe-layers last6 on 4 blocks", "--lr-grid nan",
    "publish --results without predictions"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_line_naming_it_and_the_fix(name, tmp_path, demo_encoder, derived, capsys):
    import re

    enc = demo_encoder[0]
    make_inputs(tmp_path, enc)
    module, argv, expected = cases(tmp_path, enc, derived)[name]
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as stop:
        command(entry(module))(argv)
    code = stop.value.code
    if isinstance(code, str):  # a UserError, through errors.command
        line = code
        assert line.startswith("error: "), line
    else:  # argparse's own check of a value: usage, then one error line, exit status 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and ": error: argument" in line, line
    assert "\n" not in line and "Traceback" not in line, line
    assert re.search(expected, line), line
    assert snapshot(tmp_path) == before, f"{name} left something behind"


def test_a_safetensors_file_named_pth_is_read_by_its_content(demo_encoder, tmp_path):
    """Refused as an unsafe pickle before: the name said .pth, the content is safetensors."""
    record = load_file(demo_encoder[0])
    save_file(record["model"], tmp_path / "weights.pth", metadata={"format": "semaim-encoder",
                                                                    "meta": json.dumps(record["meta"])})
    got = load_file(tmp_path / "weights.pth")
    assert got["format"] == "semaim-encoder" and all(torch.equal(got["model"][k], v)
                                                     for k, v in record["model"].items())


@pytest.mark.parametrize("argv,expected", [
    (["semaim_core.pretrain", "--preset", "demo", "--data", "/nonexistent/images", "--output-dir", "OUT"],
     "error: data folder /nonexistent/images does not exist"),
    (["tools/convert_checkpoint.py", "/dev/zero", "OUT/x.pth"], "error: checkpoint /dev/zero is a character device"),
])
def test_the_command_line_prints_the_line_and_no_traceback(argv, expected, tmp_path):
    """The same through ``python -m`` / ``python tools/...``: one line on stderr, exit status 1."""
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    cmd = [sys.executable, *(["-m"] if not argv[0].endswith(".py") else []), *argv]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith(expected) and not (tmp_path / "out").exists(), done.stderr


def test_a_read_only_output_folder_is_named(tmp_path):
    """A run directory on a read-only mount (a bind mount in a namespace of the test's own)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    done = in_own_mount_namespace(f"mount --bind -o ro {ro} {ro} && python -m semaim_core.pretrain --preset demo "
                                  f"--data {REPO / 'data/tiny_coco/train2017'} --output-dir {ro / 'run'} --max-steps 1")
    assert done.returncode == 1 and done.stderr.strip() == (
        f"error: cannot create the output directory {ro / 'run'} (Read-only file system): choose a folder you "
        "can write to"), done.stderr
