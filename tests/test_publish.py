"""tools/publish.py: a tiny pretraining run published as a Hub folder that timm loads offline with
the encoder's features, its checksums verified, and a corrupted or foreign file caught."""
import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import safetensors.torch
import timm
import torch
from conftest import in_own_mount_namespace

from cls.backbone import timm_vit_from_encoder
from cls.knn import feature_model
from semaim_core import load_encoder
from semaim_core.recipe import Config
from semaim_core.rundir import file_digest
from semaim_core.safe_io import load_file
from semaim_core.trainer import Trainer
from tools.convert_checkpoint import WRITERS
from tools.lib.publish import PublishError, publish, verify

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tiny_coco, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    Trainer(Config(data=str(tiny_coco / "train2017"), output_dir=str(out), model="semaim_vit_tiny_patch16",
                   img_size=64, depth=2, decoder_depth=1, batch_size=8, accum_iter=1, epochs=1, warmup_epochs=1,
                   dtype="fp32", device="cpu", num_workers=0, log_every=1)).fit()
    return out


def test_forward_features_are_timms_tokens_of_the_encoder(run):
    encoder = load_encoder(run / "encoder.pth")
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = timm_vit_from_encoder(run / "encoder.pth", num_classes=0).eval().forward_features(images)
        assert torch.allclose(encoder.forward_features(images), tokens, atol=1e-5)
        assert encoder.forward_features(images).shape == (2, 17, 192)


def test_published_folder_loads_in_timm_with_the_encoders_features(run, derived, tmp_path):
    from cls.knn import main as knn

    knn(["--data", str(derived / "crops"), "--encoder", str(run / "encoder.pth"), "--output-dir",
         str(tmp_path / "knn"), "--img-size", "64", "--batch-size", "64", "--num-workers", "0", "--device", "cpu"])
    out = publish(run, tmp_path / "hub", results=[str(tmp_path / "knn")], dataset="tiny_coco")
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "model.safetensors", "config.json", "README.md", "metrics.jsonl", "zoo_row.md", "SHA256SUMS",
        "detectron2_vitdet_backbone.pth", "mmseg_vit_backbone.pth"])

    record = load_file(run / "encoder.pth")
    weights = safetensors.torch.load_file(out / "model.safetensors")
    encoder = {k: v for k, v in record["model"].items() if not k.startswith("norm.")}  # fc_norm instead
    assert weights.keys() == encoder.keys() | {"fc_norm.weight", "fc_norm.bias"}  # timm's layout
    assert all(torch.equal(weights[k], v) for k, v in encoder.items())
    assert (weights["fc_norm.weight"] == 1).all() and (weights["fc_norm.bias"] == 0).all()  # without affine
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224" and config["num_classes"] == 0
    assert config["model_args"]["depth"] == 2 and config["model_args"]["img_size"] == [64, 64]
    assert config["model_args"]["global_pool"] == "avg"
    pcfg = config["pretrained_cfg"]
    assert pcfg["input_size"] == [3, 64, 64] and pcfg["crop_pct"] == 0.875 and pcfg["interpolation"] == "bicubic"
    assert pcfg["mean"] == list(timm.data.IMAGENET_DEFAULT_MEAN) and pcfg["license"] == "mit"
    assert pcfg["tag"] == "semaim_vit_tiny_patch16_semantic_1ep"  # not the architecture's own ImageNet tag

    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()  # offline, as a user loads it
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # the feature the suite's k-NN scored, and the SemAIM model's pooled feature
        knn_model = feature_model(SimpleNamespace(encoder=str(run / "encoder.pth"), img_size=64, pool="avg")).eval()
        assert torch.equal(model(images), knn_model(images))
        assert torch.allclose(model(images), load_encoder(run / "encoder.pth").pooled_features(images), atol=1e-5)
    assert timm.data.resolve_data_config({}, model=model)["crop_pct"] == 0.875

    card = (out / "README.md").read_text()
    header = card.split("---\n")[1]
    assert "library_name: timm" in header and "license: mit" in header and "- tiny_coco" in header
    assert "- **Epochs:** 1" in card and "- **Optimizer steps:** 6" in card and "arXiv:2312.10457" in card
    knn_top1 = json.loads((tmp_path / "knn" / "cls_metrics.json").read_text())["top1"]
    row = (out / "zoo_row.md").read_text().splitlines()[-1]
    assert row.startswith("| semaim_vit_tiny_patch16_semantic_1ep | vit_tiny_patch16_224 (2 blocks, 64 px) |")
    assert f"top-1 (k-NN) {knn_top1:.1f} [crops val] (knn, commit" in row and row in card
    for framework, name in (("detectron2", "detectron2_vitdet_backbone.pth"), ("mmseg", "mmseg_vit_backbone.pth")):
        expected = WRITERS[framework](record["model"])
        got = load_file(out / name)
        inner = next(iter(set(expected) & {"model", "state_dict"}))
        assert all(torch.equal(got[inner][k], v) for k, v in expected[inner].items())
    assert (out / "metrics.jsonl").read_text() == (run / "metrics.jsonl").read_text()


def test_verify_catches_corruption_and_strays_and_numbers_of_another_encoder(run, tmp_path, capsys):
    from tools.publish import main

    out = publish(run, tmp_path / "hub")
    assert verify(out) == [] and main(["--verify", str(out)]) == 0
    with pytest.raises(PublishError, match="is not empty"):
        publish(run, out)

    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    data = bytearray((damaged / "mmseg_vit_backbone.pth").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (damaged / "mmseg_vit_backbone.pth").write_bytes(bytes(data))
    (damaged / "notes.txt").write_text("added after publishing")
    (damaged / "config.json").unlink()
    assert verify(damaged) == ["notes.txt: not listed in SHA256SUMS",
                               "config.json: listed in SHA256SUMS but missing",
                               "mmseg_vit_backbone.pth: sha256 differs from SHA256SUMS (a corrupted or changed file)"]
    assert main(["--verify", str(damaged)]) == 1 and "3 problem(s)" in capsys.readouterr().out

    foreign = tmp_path / "foreign_run"
    foreign.mkdir()
    (foreign / "run.json").write_text(json.dumps({"encoder.sha256": "0" * 64}))
    with pytest.raises(PublishError, match="foreign_run: started from 0{64}, not from .*its numbers are another"):
        publish(run, tmp_path / "hub2", results=[str(foreign)])
    assert not (tmp_path / "hub2").exists()

    # a replacement that fails half-way keeps the folder it was to replace
    broken = tmp_path / "broken_run"
    broken.mkdir()
    (broken / "run.json").write_text(json.dumps({"encoder.sha256": file_digest(run / "encoder.pth")}))
    (broken / "cls_metrics.json").write_text("{torn")
    with pytest.raises(PublishError, match="has a problem: .*cls_metrics.json: not readable JSON"):
        publish(run, out, results=[str(broken)], overwrite=True)
    assert verify(out) == [] and not list(tmp_path.glob(".hub.tmp*"))


def publish_cli(*argv, **kw):
    return subprocess.Popen([sys.executable, "tools/publish.py", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_two_publishers_into_one_folder_one_wins(run, tmp_path):
    """Two tools/publish.py started together into one folder: one writes it, the other is refused
    (the lock beside the folder while the first runs, or the folder it left), and the folder verifies."""
    procs = [publish_cli(run, tmp_path / "hub") for _ in range(2)]
    outcomes = sorted((p.wait(timeout=300), p.stdout.read()) for p in procs)
    assert [rc for rc, _ in outcomes] == [0, 1], outcomes
    assert "in use by process" in outcomes[1][1] or "is not empty" in outcomes[1][1], outcomes[1][1]
    assert verify(tmp_path / "hub") == [] and sorted(p.name for p in tmp_path.iterdir()) == ["hub"]


def test_a_full_disk_is_named_and_leaves_nothing(run, tmp_path):
    """publish.py into a 1 MiB tmpfs (its own mount namespace): 'no space left', and no temporary folder."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = in_own_mount_namespace(f"mount -t tmpfs -o size=1m tmpfs {disk} && python tools/publish.py {run} "
                                  f"{disk}/hub; rc=$?; echo LEFT: $(ls -A {disk}); exit $rc")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no space left on its disk" in done.stderr and "partial folder was removed" in done.stderr, done.stderr
    assert done.stdout.strip().endswith("LEFT:"), done.stdout  # nothing behind: no hub, no .hub.tmp-PID


def test_sums_that_leave_the_folder_or_lack_the_separator_are_refused(run, tmp_path):
    out = publish(run, tmp_path / "hub")
    sums = (out / "SHA256SUMS").read_text()
    (out / "SHA256SUMS").write_text(sums + f"{'0' * 64}  ../x\n{'0' * 64} config.json\n")
    n = len(sums.splitlines())
    assert verify(out) == [f"SHA256SUMS, line {n + 1}: names '../x', which is not a file of this folder",
                           f"SHA256SUMS, line {n + 2}: not '<sha256>  <file name>' ('{'0' * 60}')"]


def test_results_without_predictions_are_named(run, tmp_path):
    det = tmp_path / "det"
    det.mkdir()
    (det / "run.json").write_text(json.dumps({"train.init_checkpoint.sha256": file_digest(run / "encoder.pth")}))
    nothing = {"bbox": dict.fromkeys(("AP", "AP50", "AP75")), "segm": {}}  # COCOEvaluator, no detections
    (det / "det_metrics.json").write_text(json.dumps({"task": "det", "dataset": "coco_2017_val", "iteration": 10,
                                                      **nothing, "provenance": {"iteration": 10}}))
    with pytest.raises(PublishError, match="det_metrics.json: the evaluation had no predictions to score"):
        publish(run, tmp_path / "hub", results=[str(det)])
    assert not (tmp_path / "hub").exists()


def test_every_published_file_is_readable_by_others(run, tmp_path):
    out = publish(run, tmp_path / "hub", dataset="tiny_coco")
    ordinary = tmp_path / "ordinary"
    ordinary.write_text("")  # the mode this process gives a new file
    modes = {f.name: oct(f.stat().st_mode & 0o777) for f in out.iterdir()}
    assert set(modes.values()) == {oct(ordinary.stat().st_mode & 0o777)}, modes
