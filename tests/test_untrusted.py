"""Checkpoint files are untrusted input: no reader of the suite runs code from a file unless the user
passes --trust-pickle, and every genuine layout (MAE, the authors', SAIM, timm, detectron2, mmengine,
the suite's own) still loads."""
import argparse
import json
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cls.backbone import timm_vit_from_encoder
from det.checkpoint import AtomicCheckpointer, load_backbone, load_detector
from seg.backbone import SemAIMViT
from seg.engine import PlainLogScalarsHook, SemAIMRunner, read_checkpoint, route_checkpoint_reads
from seg.tools.test import load_segmentor
from semaim_core import build_model
from semaim_core.export import semaim_from_encoder
from semaim_core.layouts import encoder_from_checkpoint, read_encoder
from semaim_core.safe_io import CheckpointError, UnsafeCheckpointError, load_file
from semaim_core.targets import TeacherWeightsError, load_teacher
from tools import convert_checkpoint

REPO = Path(__file__).resolve().parents[1]
SIZE = 32


class Payload:
    """What a malicious checkpoint holds: unpickling it calls ``call(*args)``."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("semaim_vit_tiny_patch16", img_size=SIZE, depth=2)


@pytest.fixture(scope="module")
def encoder(model):
    return model.encoder_state_dict()


@pytest.fixture(params=["os.system", "builtins.exec"])
def evil(request, tmp_path, encoder):
    """(path, marker): an MAE-layout checkpoint with real encoder weights whose ``args`` entry, once
    unpickled, creates ``marker``."""
    marker = tmp_path / "MARKER"
    if request.param == "os.system":
        payload = Payload(os.system, f"touch {marker}")
    else:
        payload = Payload(exec, f"open({str(marker)!r}, 'w').close()")
    path = tmp_path / "evil.pth"
    torch.save({"model": encoder, "args": payload, "epoch": 1}, path)
    return path, marker, request.param


def call_det_backbone(path):
    load_backbone(SimpleNamespace(backbone=SimpleNamespace(net=None)), path)  # the file is read before the model


def call_det_resume(path):
    AtomicCheckpointer(torch.nn.Linear(1, 1), str(path.parent))._load_file(str(path))


def call_mmengine(path):
    from mmengine.runner.checkpoint import _load_checkpoint  # what an init_cfg Pretrained calls

    route_checkpoint_reads()  # as the SemAIMRunner does when it is built
    _load_checkpoint(str(path), map_location="cpu")


def call_seg_runner(path):
    SemAIMRunner.load_checkpoint(SimpleNamespace(call_hook=lambda *a, **k: None), str(path))  # resume, load_from


READERS = {
    "converter": lambda p: convert_checkpoint.main([str(p), str(p.with_name("out.safetensors"))]),
    "det init_checkpoint": call_det_backbone,
    "det --eval-only": lambda p: load_detector(torch.nn.Linear(1, 1), str(p)),
    "det resume": call_det_resume,
    "seg backbone.checkpoint": lambda p: SemAIMViT(img_size=SIZE, embed_dims=192, num_layers=2,
                                                   num_heads=3).load_encoder(str(p)),
    "seg test": lambda p: load_segmentor(torch.nn.Linear(1, 1), str(p)),
    "seg resume / load_from": call_seg_runner,
    "mmengine init_cfg": call_mmengine,
    "cls --encoder / k-NN": lambda p: timm_vit_from_encoder(p, num_classes=3),
    "order pictures": lambda p: semaim_from_encoder(p, SIZE, "semaim_vit_tiny_patch16"),
    "teacher": lambda p: load_teacher("dino", p, img_size=SIZE, embed_dim=192, depth=2, num_heads=3),
    "training resume": load_file,
}


@pytest.mark.parametrize("reader", READERS)
def test_a_payload_pickle_runs_nothing_and_says_what_to_do(reader, evil):
    path, marker, name = evil
    with pytest.raises((UnsafeCheckpointError, TeacherWeightsError, SystemExit)) as err:
        READERS[reader](path)
    assert not marker.exists(), f"{reader} ran the file's code"
    message = str(err.value)
    shown = "posix.system (= os.system)" if name == "os.system" else "builtins.exec"
    assert shown in message and "--trust-pickle" in message and str(path) in message, message


def test_trust_pickle_converts_a_payload_file_only_when_given(evil, encoder, capfd):
    path, marker, _ = evil
    out = path.with_name("enc.safetensors")
    with pytest.raises(SystemExit):
        convert_checkpoint.main([str(path), str(out)])
    assert not marker.exists() and not out.exists()
    convert_checkpoint.main([str(path), str(out), "--trust-pickle", "--depth", "2"])
    assert marker.exists()  # the flag did unpickle everything, as it warns
    assert "WARNING: --trust-pickle" in capfd.readouterr().err
    sd, meta = read_encoder(out)  # and from then on the safetensors file needs no flag
    assert meta["source_kind"] == "mae" and sd.keys() == encoder.keys()
    assert all(torch.equal(sd[k], encoder[k]) for k in sd)


def saim_split(encoder):
    sd = {}
    for k, v in encoder.items():
        if k.endswith("attn.qkv.weight"):
            sd |= {k.replace("qkv", x): part for x, part in zip("qkv", v.chunk(3))}
        elif k.endswith("attn.qkv.bias"):
            q, _, v_ = v.chunk(3)
            sd |= {k.replace("qkv.bias", "q_bias"): q, k.replace("qkv.bias", "v_bias"): v_}
        else:
            sd[k] = v
    return sd


def mae_args(**kw):
    """``args`` as MAE's main_pretrain.py parses them (what util/misc.py save_model stores); the
    model name is a custom one, as the test encoders have 2 blocks (a standard name declares its depth)."""
    return argparse.Namespace(batch_size=64, epochs=800, accum_iter=1, model="mae_vit_depth2_patch16", input_size=224,
                              mask_ratio=0.75, norm_pix_loss=True, weight_decay=0.05, lr=None, blr=1.5e-4,
                              min_lr=0.0, warmup_epochs=40, data_path="/datasets01/imagenet_full_size/061417/",
                              output_dir=Path("./output_dir"), device="cuda", seed=0, resume="", start_epoch=0,
                              num_workers=10, pin_mem=True, world_size=64, local_rank=-1, dist_on_itp=False,
                              dist_url="env://", rank=0, gpu=0, distributed=True, dist_backend="nccl", **kw)


def optimizer_state(params):
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95))
    sum(p.sum() for p in params).backward()
    opt.step()
    return opt.state_dict()


GENUINE = {
    # MAE / the authors (util/misc.py save_model): weights, optimizer, epoch, scaler, args
    "mae save_model": lambda enc, params: {"model": enc, "optimizer": optimizer_state(params), "epoch": 799,
                                           "scaler": torch.amp.GradScaler("cpu").state_dict(), "args": mae_args()},
    "authors save_model": lambda enc, params: {
        "model": enc, "optimizer": optimizer_state(params), "epoch": 399,
        "loss_scaler": torch.amp.GradScaler("cpu").state_dict(),
        "args": mae_args(permutation_type="stochastic", target="pixel", similarity_temp=0.07)},
    "authors release": lambda enc, params: {"state_dict": {f"module.{k}": v for k, v in enc.items()},
                                            "model": "aim_custom", "epoch": np.int64(399)},
    "saim": lambda enc, params: {"model": {f"module.{k}": v for k, v in saim_split(enc).items()},
                                 "optimizer": optimizer_state(params), "epoch": 799, "args": mae_args()},
    # timm's train.py: arch, state_dict, optimizer, version, args, metric (+ EMA)
    "timm train.py": lambda enc, params: {"epoch": 299, "arch": "vit_depth2_patch16_32", "state_dict": enc,
                                          "state_dict_ema": enc, "optimizer": optimizer_state(params), "version": 2,
                                          "args": mae_args(), "metric": np.float64(72.5)},
    "timm bare state dict": lambda enc, params: dict(enc),
}


@pytest.mark.parametrize("layout", GENUINE)
def test_genuine_layouts_still_load(layout, encoder, tmp_path):
    params = [torch.nn.Parameter(torch.randn(3)) for _ in range(2)]
    ckpt = GENUINE[layout](encoder, params)
    path = tmp_path / "release.pth"
    torch.save(ckpt, path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) or layout == "timm bare state dict"
    sd, meta = read_encoder(path, depth=2)  # the test encoder: ViT-Tiny's width, but 2 blocks
    if layout != "saim":  # SAIM has no k bias: checked in test_checkpoint
        assert all(torch.equal(sd[k], encoder[k]) for k in encoder)
    assert meta["depth"] == 2 and meta["embed_dim"] == 192


def test_detectron2_and_mmengine_checkpoints_load(tmp_path):
    """The non-tensor objects of detectron2's and mmengine's own checkpoints (written by their writers)."""
    from detectron2.solver import LRMultiplier, WarmupParamScheduler
    from fvcore.common.checkpoint import Checkpointer
    from fvcore.common.param_scheduler import CosineParamScheduler
    from mmengine.logging import MessageHub

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = LRMultiplier(opt, WarmupParamScheduler(CosineParamScheduler(1, 0), 0.001, 0.1), max_iter=10)
    Checkpointer(net, str(tmp_path), optimizer=opt, scheduler=sched).save("model_final", iteration=9)
    ckpt = AtomicCheckpointer(net, str(tmp_path))._load_file(str(tmp_path / "model_final.pth"))
    assert ckpt["iteration"] == 9 and "scheduler" in ckpt
    load_detector(torch.nn.Linear(3, 2), str(tmp_path / "model_final.pth"))

    hub = MessageHub.get_instance("untrusted-test")
    hub.update_scalar("train/loss", np.float64(0.5))
    hub.update_info("iter", 7)
    mm = {"meta": {"epoch": 0, "iter": 7, "seed": np.int64(0), "dataset_meta": {"classes": ("a", "b")}},
          "state_dict": net.state_dict(), "message_hub": hub.state_dict(), "optimizer": opt.state_dict(),
          "param_schedulers": [{"last_step": 7, "base_values": [0.1]}]}
    PlainLogScalarsHook().before_save_checkpoint(None, mm)  # as the SemAIMRunner saves it
    torch.save(mm, tmp_path / "iter_7.pth")
    got = load_file(tmp_path / "iter_7.pth")  # plain data: no type beyond the suite's allow-list
    PlainLogScalarsHook().after_load_checkpoint(None, got)
    assert got["message_hub"]["log_scalars"]["train/loss"].current() == 0.5
    assert hub.get_scalar("train/loss").current() == 0.5  # the live hub was not converted
    load_segmentor(torch.nn.Linear(3, 2), str(tmp_path / "iter_7.pth"))


class EarlierHistoryBuffer:
    """How the suite's checkpoints held a logged scalar before ``PlainLogScalarsHook``."""

    def __reduce__(self):
        from mmengine.logging import HistoryBuffer

        return HistoryBuffer, ([0.25, 0.5], [1, 1], 20)


def test_seg_checkpoints_of_earlier_versions_still_resume_and_only_there(tmp_path):
    path = tmp_path / "iter_3.pth"
    torch.save({"meta": {"iter": 3}, "state_dict": {}, "message_hub": {"log_scalars": {
        "train/loss": EarlierHistoryBuffer()}, "runtime_info": {}, "resumed_keys": {}}}, path)
    assert read_checkpoint(str(path))["message_hub"]["log_scalars"]["train/loss"].mean() == 0.375
    with pytest.raises(UnsafeCheckpointError, match="imports mmengine.logging.history_buffer.HistoryBuffer"):
        load_file(path)  # the type is allowed where seg's reader passes it, not everywhere


def test_tampered_safetensors_are_named(encoder, tmp_path):
    bad_json = tmp_path / "bad_meta.safetensors"
    save_file(dict(encoder), bad_json, metadata={"format": "semaim-encoder", "meta": "{not json"})
    with pytest.raises(CheckpointError, match=f"{bad_json}.*not valid JSON"):
        read_encoder(bad_json)
    lacking = tmp_path / "lacking.safetensors"
    partial = {k: v for k, v in encoder.items() if not k.startswith("blocks.1.mlp")}
    save_file(partial, lacking, metadata={"format": "semaim-encoder", "meta": json.dumps({"depth": 2})})
    with pytest.raises(CheckpointError, match=f"{lacking}.*lacks 4 encoder weights"):
        read_encoder(lacking)
    torn = tmp_path / "torn.safetensors"
    torn.write_bytes(lacking.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=f"cannot read safetensors file {torn}"):
        read_encoder(torn)


def test_the_suite_reads_nothing_with_full_unpickling():
    """Only the explicit --trust-pickle path of safe_io.load_file may unpickle fully."""
    pattern = r"weights_only=False|jit\.load\(|pickle\.loads?\("
    found = subprocess.run(["grep", "-rnE", pattern, "semaim_core", "det", "seg", "cls", "tools"],
                           cwd=REPO, capture_output=True, text=True).stdout.splitlines()
    assert found and {line.split(":")[0] for line in found} == {"semaim_core/safe_io.py"}, found


def test_the_suites_own_checkpoints_need_nothing_else(model, tmp_path):
    """A training checkpoint (RNG states, config) and an export load with the allow-list alone."""
    from semaim_core.export import export_encoder
    from semaim_core.safe_io import save_atomic
    from semaim_core.training import grad_scaler, training_state

    opt = torch.optim.AdamW(model.parameters())
    save_atomic(training_state("semaim-train", model, opt, grad_scaler(torch.device("cpu"), None), step=3,
                               config={"model_config": model.config}), tmp_path / "ckpt.pth")
    ckpt = load_file(tmp_path / "ckpt.pth")
    assert ckpt["step"] == 3 and ckpt["rng"]["numpy"][0] == "MT19937"
    assert encoder_from_checkpoint(ckpt)[1]["depth"] == 2
    save_atomic(export_encoder(model), tmp_path / "enc.pth")
    assert load_file(tmp_path / "enc.pth")["format"] == "semaim-encoder"


@pytest.fixture
def served(tmp_path, encoder):
    """An HTTP server on the loopback address serving a payload checkpoint (real encoder weights whose
    ``args`` create ``marker`` when unpickled): (url, marker, paths requested)."""
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    site, marker, requested = tmp_path / "site", tmp_path / "MARKER", []
    site.mkdir()
    torch.save({"model": encoder, "args": Payload(os.system, f"touch {marker}"), "epoch": 1}, site / "evil.pth")

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/evil.pth", marker, requested
    server.shutdown()


def seg_tool(name, *argv):
    import importlib

    return importlib.import_module(f"seg.tools.{name}").main(list(argv))


def det_main(*argv):
    from det.train_net import main, parse_args

    return main(parse_args(list(argv)))


TINY_SEG = "seg/configs/upernet_semaim-vit-tiny_1xb4-100iters_tiny-coco-stuff-256x256.py"
TINY_DET = "det/configs/vitdet_semaim_tiny_coco.py"


def seg_data(derived):
    return [f"{s}_dataloader.{k}" for s in ("train", "val", "test")
            for k in (f"dataset.data_root={derived / 'coco_stuff'}", "num_workers=0", "persistent_workers=False")]


REMOTE_ENTRY_POINTS = {
    "seg load_from": lambda url, tmp, derived, enc: seg_tool(
        "train", TINY_SEG, "--work-dir", str(tmp / "seg1"), "--cfg-options", f"load_from={url}",
        f"model.backbone.checkpoint={enc}", *seg_data(derived)),
    "seg model.backbone.checkpoint": lambda url, tmp, derived, enc: seg_tool(
        "train", TINY_SEG, "--work-dir", str(tmp / "seg2"), "--cfg-options", f"model.backbone.checkpoint={url}",
        *seg_data(derived)),
    "seg test.py": lambda url, tmp, derived, enc: seg_tool(
        "test", TINY_SEG, url, "--work-dir", str(tmp / "seg3"), "--cfg-options", *seg_data(derived)),
    "det train.init_checkpoint": lambda url, tmp, derived, enc: det_main(
        "--config", TINY_DET, f"train.output_dir={tmp / 'det1'}", f"train.init_checkpoint={url}",
        "dataloader.train.num_workers=0"),
    "det --eval-only": lambda url, tmp, derived, enc: det_main(
        "--eval-only", "--config", TINY_DET, f"train.output_dir={tmp / 'det2'}", f"train.init_checkpoint={url}"),
    "cls --encoder": lambda url, tmp, derived, enc: __import__("cls.knn").knn.main(
        ["--data", str(derived / "crops"), "--encoder", url, "--output-dir", str(tmp / "knn"), "--device", "cpu"]),
    "converter": lambda url, tmp, derived, enc: convert_checkpoint.main([url, str(tmp / "out.pth")]),
    "teacher": lambda url, tmp, derived, enc: load_teacher("dino", url, img_size=SIZE, embed_dim=192, depth=2,
                                                           num_heads=3),
}


def test_a_remote_checkpoint_is_refused_by_every_entry_point_before_it_is_fetched(served, tmp_path, derived,
                                                                                   demo_encoder):
    """A payload served on the loopback address, given to each entry point that reads a checkpoint:
    each refuses the address by name before fetching it (mmengine's http:// loader would download it
    and torch.load it, running the payload)."""
    import urllib.request

    url, marker, requested = served
    for name, call in REMOTE_ENTRY_POINTS.items():
        with pytest.raises((CheckpointError, SystemExit)) as err:
            call(url, tmp_path, derived, demo_encoder[0])
        assert f"{url} is a http:// address" in str(err.value) and "Download it" in str(err.value), (name, err.value)
        assert not marker.exists() and not requested, f"{name} fetched or ran the file"
    assert urllib.request.urlopen(url, timeout=10).read()[:2] == b"PK" and requested  # the server did serve it


@pytest.mark.parametrize("address", ["https://example.org/x.pth", "torchvision://resnet50", "modelzoo://resnet50",
                                     "open-mmlab://resnet50_v1c", "openmmlab://resnet50_v1c", "mmcls://vit",
                                     "s3://bucket/x.pth", "open-mmlab:s3://bucket/x.pth", "petrel://b/x.pth",
                                     "pavi://x/y.pth", "detectron2://ImageNetPretrained/MAE/mae_pretrain_vit_base.pth",
                                     "file:///tmp/x.pth", "my-plugin+v2://x.pth"])
def test_every_scheme_mmengine_or_detectron2_resolves_is_refused_by_name(address):
    from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint

    route_checkpoint_reads()  # as the SemAIMRunner does when it is built
    CheckpointLoader.register_scheme("my-plugin+v2://", lambda f, m=None: torch.load(f), force=True)  # a plugin's
    scheme = address.split("://")[0].split(":")[-1]
    for read in (lambda a: _load_checkpoint(a, map_location="cpu"), load_file, read_encoder):
        with pytest.raises(CheckpointError, match=f"is a {re.escape(scheme)}:// address.*local files only"):
            read(address)
    with pytest.raises(CheckpointError, match="address"):
        AtomicCheckpointer(torch.nn.Linear(1, 1), "unused").load(address)


class ArrayBomb:
    """Unpickles as numpy's ``_reconstruct`` asked for a 74.5 GiB array (a real array pickles shape (0,) there)."""

    def __reduce__(self):
        return np._core.multiarray._reconstruct, (np.ndarray, (100_000, 100_000), np.dtype("float64"))


def deflated_record(path, tmp_path, encoder):
    """A torch checkpoint plus one record stored deflate-compressed: 64 MiB of zeros in 65 kB."""
    import zipfile

    torch.save({"model": encoder}, path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{path.stem}/extra", bytes(64 << 20))


def oversized_record(path, tmp_path, encoder):
    """A torch checkpoint whose central directory claims 2 GiB for its first tensor record."""
    torch.save({"model": encoder}, path)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"PK\x01\x02")  # central directory entries: sizes at +20 and +24, the name at +46
    while not raw[at + 46:at + 46 + int.from_bytes(raw[at + 28:at + 30], "little")].endswith(b"/data/0"):
        at = raw.index(b"PK\x01\x02", at + 4)
    raw[at + 20:at + 28] = (2 << 30).to_bytes(4, "little") * 2
    path.write_bytes(bytes(raw))


def nested_meta(path, tmp_path, encoder):
    save_file(dict(encoder), path, metadata={"format": "semaim-encoder", "meta": "[" * 100_000})


BOMBS = {
    "deflated record": (deflated_record, "evil.pth", r"record evil/extra is stored compressed \(zip method 8, "
                                                     r"[\d,]+ bytes that expand to 67,108,864\)"),
    "oversized record": (oversized_record, "evil.pth", r"record evil/data/0 declares 2,147,483,648 bytes, more than "
                                                       r"the [\d,]+-byte file holds"),
    "numpy array": (lambda p, t, enc: torch.save({"model": enc, "args": ArrayBomb()}, p), "evil.pth",
                    r"declares a numpy array of shape \(100000, 100000\) \(80,000,000,000 bytes\) in a file of"),
    "nested JSON": (nested_meta, "evil.safetensors", "'meta' entry of its safetensors header is nested too deeply"),
}


@pytest.mark.parametrize("bomb", BOMBS)
def test_a_file_cannot_make_the_reader_allocate_more_than_it_holds(bomb, encoder, tmp_path):
    """Each file is a few MB at most and asks for GBs (or for unbounded recursion): every reader
    refuses it by name before allocating, and the converter writes nothing."""
    build, name, message = BOMBS[bomb]
    path = tmp_path / name
    build(path, tmp_path, encoder)
    assert path.stat().st_size < 8 << 20
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))}.*{message}"):
        read_encoder(path)
    with pytest.raises(SystemExit) as exit_:
        convert_checkpoint.main([str(path), str(tmp_path / "out.pth")])
    assert re.search(message, str(exit_.value)) and not (tmp_path / "out.pth").exists()
