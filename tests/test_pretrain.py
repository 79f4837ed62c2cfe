"""The pretraining loop: exact resume, atomic checkpoints, NaN stop, learning on real images, export."""
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import step_rows

from semaim_core import build_model, recipe
from semaim_core.data import UnreadableImageError
from semaim_core.pretrain import parse_args
from semaim_core.recipe import Config
from semaim_core.rundir import RunDirError
from semaim_core.safe_io import CheckpointError, load_file, save_atomic
from semaim_core.trainer import Trainer, checkpoint_paths, non_finite
from semaim_core.training import NonFiniteError


def cfg(tiny_coco, out, **kw):
    base = dict(data=str(tiny_coco / "train2017"), output_dir=str(out), model="semaim_vit_tiny_patch16", img_size=32,
                depth=2, batch_size=4, accum_iter=1, epochs=2, warmup_epochs=1, blr=1e-3, dtype="fp32", device="cpu",
                num_workers=0, save_every=1000, log_every=1, drop_path=0.1)
    base.update(kw)
    return Config(**base)


def params(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_resume_is_exact(tiny_coco, tmp_path):
    straight = Trainer(cfg(tiny_coco, tmp_path / "a", max_steps=6, accum_iter=2))
    straight.fit()
    first = Trainer(cfg(tiny_coco, tmp_path / "b", max_steps=3, accum_iter=2))
    first.fit()
    del first  # "killed"
    resumed = Trainer(cfg(tiny_coco, tmp_path / "b", max_steps=6, accum_iter=2))
    assert resumed.step == 3
    resumed.fit()
    a, b = params(straight), params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [json.loads(r)["step"] for r in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3,
                                                                                                          4, 5, 6]
    # and the resumed optimizer state too
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)


def test_a_torn_last_metrics_row_is_dropped_not_fatal(tiny_coco, tmp_path, capsys):
    Trainer(cfg(tiny_coco, tmp_path, max_steps=2, depth=1, decoder_depth=1)).fit()
    log = tmp_path / "metrics.jsonl"
    with open(log, "a") as f:
        f.write('{"step": 3, "epoch": 0, "lo')  # killed while writing row 3
    Trainer(cfg(tiny_coco, tmp_path, max_steps=3, depth=1, decoder_depth=1)).fit()
    assert "dropping a torn last row" in capsys.readouterr().err  # a warning
    assert [json.loads(r)["step"] for r in log.read_text().splitlines()] == [1, 2, 3]
    rows = log.read_text().splitlines()
    log.write_text("\n".join([rows[0], "{torn", *rows[1:]]) + "\n")  # damage elsewhere is not guessed at
    with pytest.raises(RunDirError, match="metrics.jsonl, line 2, is not JSON"):
        Trainer(cfg(tiny_coco, tmp_path, max_steps=4, depth=1, decoder_depth=1)).fit()


def test_resume_crosses_epoch_boundaries(tiny_coco, tmp_path):
    # 50 images / batch 4 = 12 steps per epoch: stop mid-epoch, finish in the next one
    straight = Trainer(cfg(tiny_coco, tmp_path / "a", max_steps=14, depth=1, decoder_depth=1))
    straight.fit()
    Trainer(cfg(tiny_coco, tmp_path / "b", max_steps=7, depth=1, decoder_depth=1)).fit()
    resumed = Trainer(cfg(tiny_coco, tmp_path / "b", max_steps=14, depth=1, decoder_depth=1))
    resumed.fit()
    for k, v in params(straight).items():
        assert torch.equal(v, params(resumed)[k]), k


def test_outputs_metrics_checkpoints_and_keep_last(tiny_coco, tmp_path):
    t = Trainer(cfg(tiny_coco, tmp_path, max_steps=5, save_every=1, keep=2, depth=1, decoder_depth=1))
    t.fit()
    assert [p.name for p in checkpoint_paths(tmp_path)] == ["checkpoint-00000004.pth", "checkpoint-00000005.pth"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert {"grad_norm", "img_per_s"} <= set(rows[0]) and step_rows(tmp_path) == rows  # the suite's schema
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "config.json").read_text())["effective_batch"] == 4
    assert not list(tmp_path.glob(".*tmp*"))


def test_interrupted_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint-00000001.pth"
    save_atomic({"format": "semaim-train", "step": 1}, path)

    def dying_save(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"format": "semaim-train", "step": 2}, path)
    monkeypatch.undo()
    assert load_file(path)["step"] == 1
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.fixture
def nan_stopped_run(tiny_coco, tmp_path, monkeypatch):
    """A run whose loss turns NaN at step 5 (checkpoints every 2 steps): (trainer, the error)."""
    t = Trainer(cfg(tiny_coco, tmp_path, max_steps=8, save_every=2, depth=1, decoder_depth=1))
    forward = t.model.forward

    def poisoned(images, order_scores=None):
        out = forward(images, order_scores)
        if t.step == 5:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(t.model, "forward", poisoned)
    with pytest.raises(NonFiniteError) as err:
        t.fit()
    return t, err.value


LOWER_LR = dict(max_steps=8, save_every=2, depth=1, decoder_depth=1, blr=5e-4)  # the remedy the message names


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(nan_stopped_run, tmp_path):
    _, error = nan_stopped_run
    assert re.search("loss is nan at step 5.*checkpoint-00000004.pth", str(error))
    last = load_file(checkpoint_paths(tmp_path)[-1])
    assert last["step"] == 4 and all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_resuming_a_nan_stopped_run_with_its_remedy_needs_it_said(nan_stopped_run, tiny_coco, tmp_path):
    with pytest.raises(RunDirError, match=r"(?s)blr: 0.001 -> 0.0005.*pass --allow-recipe-change"):
        Trainer(cfg(tiny_coco, tmp_path, **LOWER_LR))


def test_a_remedy_said_resumes_from_the_last_good_step_and_is_recorded(nan_stopped_run, tiny_coco, tmp_path):
    t = Trainer(cfg(tiny_coco, tmp_path, allow_recipe_change=True, **LOWER_LR))
    assert t.step == 4
    t.fit()
    changes = [json.loads(line) for line in (tmp_path / "recipe_changes.jsonl").read_text().splitlines()]
    assert changes[0]["changes"] == ["blr: 0.001 -> 0.0005"]


@pytest.mark.parametrize("clip_grad", [None, 3.0])
def test_nan_gradient_with_a_finite_loss_never_reaches_the_weights(tiny_coco, tmp_path, clip_grad):
    """A huge lr: the loss stays finite but the gradient norm is NaN. No step is applied, and no
    checkpoint with a non-finite value is ever written or named as good."""
    t = Trainer(cfg(tiny_coco, tmp_path, lr=1e4, warmup_epochs=0, clip_grad=clip_grad, max_steps=6, save_every=1))
    with pytest.raises(NonFiniteError,
                       match=r"gradient norm is nan at step \d+ \(loss .*\): stopping before the update"):
        t.fit()
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    saved = checkpoint_paths(tmp_path)
    assert saved
    for path in saved:
        ckpt = load_file(path)
        assert non_finite(ckpt["model"]) == [] and non_finite(ckpt["optimizer"]["state"]) == []


def test_non_finite_state_is_never_saved(tiny_coco, tmp_path):
    t = Trainer(cfg(tiny_coco, tmp_path, max_steps=1))
    t.fit()
    with torch.no_grad():
        t.model.blocks[0].mlp.fc1.weight[0, 0] = float("inf")
    t.step += 1
    with pytest.raises(NonFiniteError, match=r"non-finite values in 1 tensors at step 2 .*blocks.0.mlp.fc1.weight.*"
                                                 r"checkpoint-00000001.pth"):
        t.save()
    assert [p.name for p in checkpoint_paths(tmp_path)] == ["checkpoint-00000001.pth"]


@pytest.mark.slow
def test_short_pretraining_lowers_the_loss_and_exports_for_timm(tiny_coco, tmp_path):
    import timm

    t = Trainer(cfg(tiny_coco, tmp_path, img_size=64, depth=2, batch_size=10, epochs=8, warmup_epochs=1,
                    blr=2e-2, drop_path=0.0))
    t.fit()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.95 * sum(losses[:5]) / 5

    enc = load_file(tmp_path / "encoder.pth")
    assert enc["format"] == "semaim-encoder" and enc["meta"]["depth"] == 2
    assert enc["meta"]["steps"] == 40 and enc["meta"]["final_loss"] == losses[-1] and enc["meta"]["suite_commit"]
    same = load_file(tmp_path / "encoder.safetensors")
    assert same["meta"] == json.loads(json.dumps(enc["meta"])) and all(torch.equal(same["model"][k], v)
                                                                        for k, v in enc["model"].items())
    card = (tmp_path / "encoder.md").read_text()
    assert "autoregression order: semantic" in card and "optimizer steps: 40" in card and "mmseg" in card
    model = timm.create_model(enc["meta"]["timm_arch"], pretrained=False, **enc["meta"]["timm_kwargs"])
    result = model.load_state_dict(enc["model"], strict=False)
    assert sorted(result.missing_keys) == ["head.bias", "head.weight"] and not result.unexpected_keys
    # timm computes exactly our unmasked encoder
    images = torch.randn(2, 3, 64, 64)
    t.model.eval()
    x, cls, _ = t.model.embed(images)
    h = torch.cat([cls, x], 1)
    for blk in t.model.blocks:
        h = blk(h)
    torch.testing.assert_close(model.eval().forward_features(images), t.model.norm(h), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_float8_pretraining_learns_and_tracks_the_same_recipe_without_it(tiny_coco, tmp_path, capsys):
    """The opt-in FP8 mode trains the same model, within FP8 rounding: its loss curve follows the
    run without it step by step, and tools/compare_loss_curves.py reports that and the one setting apart."""
    from tools.compare_loss_curves import main as compare_curves

    recipe = dict(img_size=64, depth=2, batch_size=10, epochs=8, warmup_epochs=1, blr=2e-2, drop_path=0.0,
                  similarity_precision="autocast")
    for name, extra in (("plain", {}), ("fp8", dict(float8=True))):
        Trainer(cfg(tiny_coco, tmp_path / name, **recipe, **extra)).fit()
    curves = {name: [json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
              for name in ("plain", "fp8")}
    plain, fp8 = curves["plain"], curves["fp8"]
    assert len(fp8) == 40 and sum(fp8[-5:]) < 0.95 * sum(fp8[:5])  # it learns
    assert fp8 != plain and all(abs(b / a - 1) < 0.02 for a, b in zip(plain, fp8))
    assert load_file(tmp_path / "fp8" / "encoder.pth")["model"].keys() == load_file(
        tmp_path / "plain" / "encoder.pth")["model"].keys()

    capsys.readouterr()
    assert compare_curves([str(tmp_path / "plain"), str(tmp_path / "fp8"), "--window", "5",
                           "--plot", str(tmp_path / "loss.png")]) == 0
    out = capsys.readouterr().out
    assert "differs from the reference in: float8 False -> True\n" in out and "at 40 shared steps" in out
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert compare_curves([str(tmp_path / "plain"), str(tmp_path / "nowhere")]) == 1
    assert "nowhere/metrics.jsonl does not exist" in capsys.readouterr().err


def test_empty_data_folder_is_a_clear_error(tiny_coco, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        Trainer(cfg(tiny_coco, tmp_path / "out", data=str(tmp_path / "empty")))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Trainer(cfg(tiny_coco, tmp_path / "out", data=str(tmp_path / "missing")))


def test_corrupt_image_is_named_or_skipped_on_request(tiny_coco, tmp_path):
    data = tmp_path / "images"
    shutil.copytree(tiny_coco / "train2017", data)
    victim = sorted(data.glob("*.jpg"))[0]
    victim.write_bytes(b"not a jpeg")
    with pytest.raises(UnreadableImageError, match=victim.name):
        settings = cfg(tiny_coco, tmp_path / "a", data=str(data), batch_size=50, max_steps=1, depth=1, decoder_depth=1)
        Trainer(settings).fit()
    t = Trainer(cfg(tiny_coco, tmp_path / "b", data=str(data), batch_size=50, max_steps=1, depth=1, decoder_depth=1,
                    skip_unreadable=True))
    t.fit()
    assert json.loads((tmp_path / "b" / "metrics.jsonl").read_text())["skipped_images"] == 1


def test_oversized_image_is_named_with_its_limit_or_skipped(tiny_coco, tmp_path):
    """A 14000 x 14000 image (past PIL's decompression-bomb limit), read in a loader worker."""
    from PIL import Image

    data = tmp_path / "images"
    shutil.copytree(tiny_coco / "train2017", data)
    victim = sorted(data.glob("*.jpg"))[0]
    victim.unlink()
    huge = victim.with_suffix(".png")
    Image.new("1", (14000, 14000)).save(huge)  # 196 M pixels, a few hundred kB as a 1-bit PNG
    settings = dict(data=str(data), batch_size=50, max_steps=1, depth=1, decoder_depth=1, num_workers=1)
    with pytest.raises(UnreadableImageError, match=rf"(?s){huge.name} is 14000 x 14000 = 196,000,000 pixels, more "
                                                   r"than the limit of 178,956,970.*--max-image-pixels 196000000"):
        Trainer(cfg(tiny_coco, tmp_path / "a", **settings)).fit()
    Trainer(cfg(tiny_coco, tmp_path / "b", skip_unreadable=True, **settings)).fit()
    assert json.loads((tmp_path / "b" / "metrics.jsonl").read_text())["skipped_images"] == 1
    with pytest.raises(UnreadableImageError, match=r"is \d+ x \d+ = .* pixels, more than the limit of 1,000"):
        Trainer(cfg(tiny_coco, tmp_path / "c", **dict(settings, data=str(tiny_coco / "train2017")),
                    max_image_pixels=1000)).fit()


@pytest.mark.slow
def test_resume_refuses_the_wrong_kind_of_checkpoint(tiny_coco, tmp_path):
    torch.save({"model": {"blocks.0.attn.qkv.weight": torch.zeros(1)}}, tmp_path / "mae.pth")
    with pytest.raises(CheckpointError, match="not a SemAIM training checkpoint"):
        Trainer(cfg(tiny_coco, tmp_path / "out", resume=str(tmp_path / "mae.pth")))


def test_cli_presets_and_overrides(tmp_path):
    c = parse_args(["--preset", "demo", "--data", "d", "--output-dir", "o", "--img-size", "64", "--order-smooth"])
    assert c.model == "semaim_vit_tiny_patch16" and c.img_size == 64 and c.order_smooth and c.device == "cpu"
    base = parse_args(["--preset", "base", "--data", "d", "--output-dir", "o"])
    assert (base.blr, base.batch_size * base.accum_iter, base.clip_grad, base.betas) == (2e-4, 256, 3.0, (0.9, 0.95))
    assert set(recipe.PRESETS) >= {"tiny", "small", "base", "large", "huge", "demo"}
    assert (base.epochs, base.warmup_epochs, base.pixel_blur) == (800, 30, True)  # the authors' main_pretrain.py
    short = parse_args(["--preset", "base_400ep", "--data", "d", "--output-dir", "o", "--no-pixel-blur"])
    assert (short.model, short.epochs, short.pixel_blur) == ("semaim_vit_base_patch16", 400, False)
    trainer_target = build_model("semaim_vit_tiny_patch16", img_size=32, depth=1,
                                 **{k: v for k, v in short.model_overrides().items() if k == "pixel_blur"})
    assert trainer_target.target.blur is False  # the switch reaches the model


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_mixed_precision_steps(tiny_coco, tmp_path, dtype):
    t = Trainer(cfg(tiny_coco, tmp_path, dtype=dtype, max_steps=2, depth=1, decoder_depth=1))
    t.fit()
    assert t.step == 2 and t.scaler.is_enabled() == (dtype == "fp16")
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


def test_ema_similarity_encoder_follows_the_online_one(tiny_coco, tmp_path):
    t = Trainer(cfg(tiny_coco, tmp_path, similarity_source="ema", ema_decay=0.5, max_steps=3, depth=1, decoder_depth=1))
    names = ("patch_embed.proj.weight", "cls_token", "blocks.0.attn.qkv.weight", "norm.weight")
    before = {n: p.clone() for n, p in t.model.ema_encoder.named_parameters() if n in names}
    assert len(before) == 4  # the whole encoder, as the authors' ModelEma
    t.fit()
    online = dict(t.model.named_parameters())
    for n, ema in t.model.ema_encoder.named_parameters():
        if n in names:
            assert not torch.equal(ema, before[n]) and not torch.equal(ema, online[n]), n
            assert not ema.requires_grad
    assert not any("ema_encoder" in n for g in t.optimizer.param_groups for n in g.get("param_names", []))
    assert sum(p.numel() for g in t.optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for p in t.model.parameters() if p.requires_grad)


def test_pretraining_writes_a_plain_text_log(tiny_coco, tmp_path):
    Trainer(cfg(tiny_coco, tmp_path, max_steps=2, depth=1, decoder_depth=1)).fit()
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert lines[0].startswith("started step 0: {") and re.match(r"step 1/2  epoch 0  loss \d", lines[1])
    assert lines[2].startswith("step 2/2")


def test_ema_decay_ramps_as_the_authors(tiny_coco, tmp_path):
    t = Trainer(cfg(tiny_coco, tmp_path, similarity_source="ema", depth=1, decoder_depth=1))
    assert [t.ema_decay(e) for e in (0, 50, 100, 400)] == pytest.approx([0.999, 0.99945, 0.9999, 0.9999])


@pytest.mark.slow(seconds=60)
def test_two_process_resume_is_exact_and_logs_each_step_once(tiny_coco, tmp_path):
    """DDP on the CPU (gloo): two ranks train with gradient accumulation, rank 0 writes the outputs.
    A run stopped after step 3 whose step-3 checkpoint was lost (killed between logging and saving),
    resumed from step 2 across the epoch boundary (3 steps an epoch), equals the uninterrupted run
    bit for bit. Drop path makes every step draw from each rank's own RNG."""
    import os
    import subprocess
    import sys

    def torchrun(out, max_steps, port):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "semaim_core.pretrain", "--data", str(tiny_coco / "train2017"), "--output-dir", str(out),
               "--model", "semaim_vit_tiny_patch16", "--img-size", "32", "--depth", "2", "--drop-path", "0.2",
               "--batch-size", "4", "--accum-iter", "2", "--epochs", "2", "--warmup-epochs", "0", "--dtype", "fp32",
               "--device", "cpu", "--num-workers", "1", "--max-steps", str(max_steps), "--log-every", "1",
               "--save-every", "2"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]

    torchrun(tmp_path / "straight", 5, 29541)
    written = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert written["world_size"] == 2 and written["effective_batch"] == 16  # 4 per rank x 2 accumulated x 2 ranks
    assert load_file(checkpoint_paths(tmp_path / "straight")[-1])["step"] == 5
    torchrun(tmp_path / "resumed", 3, 29542)
    checkpoint_paths(tmp_path / "resumed")[-1].unlink()  # lost: the log has step 3, the newest checkpoint is 2
    torchrun(tmp_path / "resumed", 5, 29543)
    a, b = (load_file(d / "encoder.pth")["model"] for d in (tmp_path / "straight", tmp_path / "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [[json.loads(r)["loss"] for r in (d / "metrics.jsonl").read_text().splitlines()]
              for d in (tmp_path / "straight", tmp_path / "resumed")]
    assert losses[0] == losses[1] and len(losses[0]) == 5  # rank 0 alone logs
    steps = [line.split("/")[0] for line in (tmp_path / "resumed" / "log.txt").read_text().splitlines()
             if line.startswith("step ")]
    assert steps == [f"step {i}" for i in range(1, 6)]  # step 3 once, though it ran twice
    two = load_file(checkpoint_paths(tmp_path / "resumed")[-1])
    assert len(two["rng_per_rank"]) == 2 and not torch.equal(two["rng_per_rank"][0]["torch"],
                                                             two["rng_per_rank"][1]["torch"])


# ---------------------------------------------------------------------------- one run per directory
def test_resume_with_another_recipe_is_refused_before_touching_anything(tiny_coco, tmp_path):
    from semaim_core.rundir import RunDirError

    Trainer(cfg(tiny_coco, tmp_path, max_steps=2, depth=1, decoder_depth=1)).fit()
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    with pytest.raises(RunDirError, match=r"(?s)another recipe.*blr: 0.001 -> 0.002.*order: 'semantic' -> 'raster'"
                                          r".*new directory.*--overwrite"):
        Trainer(cfg(tiny_coco, tmp_path, max_steps=4, depth=1, decoder_depth=1, order="raster", blr=2e-3))
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.name != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"}
    # only the stopping point changed: the run continues
    t = Trainer(cfg(tiny_coco, tmp_path, max_steps=3, depth=1, decoder_depth=1))
    assert t.step == 2


def test_images_added_between_starts_are_a_recipe_change(tiny_coco, tmp_path):
    data = tmp_path / "images"
    shutil.copytree(tiny_coco / "train2017", data)
    settings = dict(data=str(data), max_steps=1, depth=1, decoder_depth=1)
    Trainer(cfg(tiny_coco, tmp_path / "run", **settings)).fit()
    first = sorted(data.glob("*.jpg"))[0]
    shutil.copy(first, data / "added.jpg")  # the epoch's data mapping would change mid-run
    with pytest.raises(RunDirError, match=r"data_files: \{'count': 50, .*\} -> \{'count': 51, "):
        Trainer(cfg(tiny_coco, tmp_path / "run", **dict(settings, max_steps=2)))
    (data / "added.jpg").rename(data / "renamed.jpg")  # the same count, another name
    first.unlink()
    with pytest.raises(RunDirError, match=r"data_files: .*'names_sha256'"):
        Trainer(cfg(tiny_coco, tmp_path / "run", **dict(settings, max_steps=2)))


def test_a_new_run_refuses_a_used_directory_unless_told_to_overwrite(tiny_coco, tmp_path):
    from semaim_core.rundir import RunDirError

    Trainer(cfg(tiny_coco, tmp_path, max_steps=2, depth=1, decoder_depth=1, save_every=1)).fit()
    with pytest.raises(RunDirError, match="already holds a run.*--overwrite"):
        Trainer(cfg(tiny_coco, tmp_path, max_steps=1, depth=1, decoder_depth=1, resume=None))
    t = Trainer(cfg(tiny_coco, tmp_path, max_steps=1, depth=1, decoder_depth=1, resume=None, overwrite=True))
    assert t.step == 0 and checkpoint_paths(tmp_path) == [] and not (tmp_path / "metrics.jsonl").exists()
    t.fit()
    assert [p.name for p in checkpoint_paths(tmp_path)] == ["checkpoint-00000001.pth"]


def test_a_second_process_is_locked_out(tiny_coco, tmp_path):
    import subprocess

    from semaim_core.rundir import RunDirError

    other = subprocess.Popen(["sleep", "30"])
    try:
        tmp_path.mkdir(exist_ok=True)
        (tmp_path / ".lock").write_text(str(other.pid))
        with pytest.raises(RunDirError, match=f"in use by process {other.pid}"):
            Trainer(cfg(tiny_coco, tmp_path, max_steps=1))
    finally:
        other.kill()
        other.wait()
    Trainer(cfg(tiny_coco, tmp_path, max_steps=1, depth=1, decoder_depth=1))  # a stale lock is taken over
    # a lock written on another host (node, container): its pid says nothing here, it is never taken
    (tmp_path / ".lock").write_text("1 gpu-node-17")
    with pytest.raises(RunDirError, match="in use by process 1 on host gpu-node-17.*delete the lock file"):
        Trainer(cfg(tiny_coco, tmp_path, max_steps=1, depth=1, decoder_depth=1))
    (tmp_path / ".lock").unlink()
    with pytest.raises(ValueError, match="--keep 0: keep at least the newest checkpoint"):
        Trainer(cfg(tiny_coco, tmp_path, max_steps=1, depth=1, decoder_depth=1, keep=0))


def test_leftovers_of_a_killed_run_are_cleaned_and_not_repeated(tiny_coco, tmp_path, capsys):
    Trainer(cfg(tiny_coco, tmp_path, max_steps=4, depth=1, decoder_depth=1, save_every=2)).fit()
    # a kill after logging steps 3-4 but before checkpoint 4 was renamed into place
    (tmp_path / "checkpoint-00000004.pth").rename(tmp_path / ".checkpoint-00000004.pth.tmp-4242")
    (tmp_path / "checkpoint-00000003.pth").write_bytes(b"torn")  # and a corrupt newest checkpoint
    t = Trainer(cfg(tiny_coco, tmp_path, max_steps=4, depth=1, decoder_depth=1, save_every=2))
    warned = capsys.readouterr().err
    assert "removed 1 temporary files" in warned and "skipping unreadable checkpoint checkpoint-00000003.pth" in warned
    assert t.step == 2 and not list(tmp_path.glob(".*.tmp*"))
    (tmp_path / "checkpoint-00000003.pth").unlink()
    t.fit()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_resume_from_another_runs_checkpoint_keeps_its_recipe(tiny_coco, tmp_path):
    """--resume PATH of another run continues that run's recipe or is refused before anything is written:
    the recipe beside the checkpoint (run.json), or the config inside a checkpoint copied on its own."""
    Trainer(cfg(tiny_coco, tmp_path / "a", max_steps=2, depth=1, decoder_depth=1)).fit()
    ckpt = tmp_path / "a" / "checkpoint-00000002.pth"
    shutil.copy(ckpt, tmp_path / "alone.pth")
    for given in (ckpt, tmp_path / "alone.pth"):
        with pytest.raises(RunDirError, match=r"(?s)--resume .*differs from this one.*blr: 0.001 -> 0.002"
                                              r".*--allow-recipe-change"):
            Trainer(cfg(tiny_coco, tmp_path / "b", max_steps=3, depth=1, decoder_depth=1, blr=2e-3,
                        resume=str(given)))
        assert not (tmp_path / "b").exists()
    t = Trainer(cfg(tiny_coco, tmp_path / "c", max_steps=3, depth=1, decoder_depth=1, resume=str(ckpt)))
    assert t.step == 2  # the same recipe (a later stopping point) continues


def test_a_lock_is_judged_by_the_process_it_names(tmp_path):
    """A lock names its owner by pid, host, boot, PID namespace and start time: a pid reused by another
    process is stale, a live owner is not, and a lock from another PID namespace is never taken over."""
    import os
    import subprocess

    from semaim_core.rundir import acquire_lock, process_identity, release_lock

    other = subprocess.Popen(["sleep", "30"])
    try:
        owner = process_identity(other.pid)
        (tmp_path / ".lock").write_text(json.dumps(owner))
        with pytest.raises(RunDirError, match=rf"in use by process {other.pid} .*If process {other.pid} is not a run "
                                              r"of the suite \(a pid reused after a crash\), delete the lock file"):
            acquire_lock(tmp_path)
        (tmp_path / ".lock").write_text(json.dumps(dict(owner, start="1")))  # that pid, started at another time
        acquire_lock(tmp_path)  # the owner is gone and its pid reused: taken over
        release_lock(tmp_path)
        (tmp_path / ".lock").write_text(json.dumps(dict(owner, pid_ns="pid:[1]")))
        with pytest.raises(RunDirError, match="of another PID namespace on this host.*delete the lock file"):
            acquire_lock(tmp_path)
    finally:
        other.kill()
        other.wait()
    (tmp_path / ".lock").unlink()
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"no PID namespaces here ({probe.stderr.decode().strip()})")
    acquire_lock(tmp_path)  # held by this process; a writer in a fresh PID namespace sees no pid of ours
    code = f"from semaim_core.rundir import acquire_lock; acquire_lock(__import__('pathlib').Path({str(tmp_path)!r}))"
    second = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code],
                            capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    assert second.returncode == 1 and "of another PID namespace" in second.stderr, second.stderr
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()  # not taken over
    release_lock(tmp_path)


def test_overwrite_never_clears_a_folder_that_is_not_a_run(tiny_coco, tmp_path):
    thesis = tmp_path / "thesis"
    (thesis / ".git").mkdir(parents=True)
    (thesis / "chapter1.tex").write_text("...")
    with pytest.raises(RunDirError, match=r"holds files \(\.git, chapter1.tex\) but no run.json: it is not a run of "
                                          r"this suite, so nothing in it is replaced or deleted, --overwrite or not"):
        Trainer(cfg(tiny_coco, thesis, max_steps=1, depth=1, decoder_depth=1, overwrite=True, resume=None))
    assert sorted(p.name for p in thesis.iterdir()) == [".git", "chapter1.tex"]


def test_a_loss_that_jumps_is_reported_when_it_jumps_recovers_or_stays_up():
    from semaim_core.training import LossWatch

    watch = LossWatch(window=5, advice="Lower the lr.")
    said = [watch.update(loss, f"at step {i}") for i, loss in enumerate([1.2, 1.1, 1.15, 1.0, 1613.0, 4e5, 30.0, 1.9])]
    assert said[:4] == [None] * 4 and said[5:7] == [None, None]
    assert said[4].startswith("WARNING: the loss jumped to 1613 at step 4, 1434 x its recent level 1.125") \
        and said[4].endswith("Lower the lr.")
    assert said[7] == "the loss is back to 1.9 at step 7 (before its jump: 1.125)"
    stuck = [watch.update(loss, f"at step {i}") for i, loss in enumerate([50.0] + [60.0] * 5, start=8)]
    assert stuck[0].startswith("WARNING: the loss jumped") and stuck[1:5] == [None] * 4
    assert stuck[5].startswith("WARNING: the loss has stayed above 2.3 for 5 steps, now 60 at step 13: this run is "
                               "unlikely to recover")


@pytest.mark.slow
def test_pretraining_at_a_far_too_high_lr_says_so(tiny_coco, tmp_path, capsys):
    Trainer(cfg(tiny_coco, tmp_path, max_steps=6, depth=1, decoder_depth=1, blr=10.0, warmup_epochs=0)).fit()
    assert "WARNING: the loss jumped to" in capsys.readouterr().err
    assert "WARNING: the loss jumped to" in (tmp_path / "log.txt").read_text()


# ---------------------------------------------------------------------------- the monitor
def test_rankme_is_the_effective_rank():
    from semaim_core.knn import rankme

    assert rankme(torch.eye(8)) == pytest.approx(8, rel=1e-5)  # every direction alike
    assert rankme(torch.randn(50, 1) @ torch.randn(1, 16)) == pytest.approx(1, abs=1e-3)  # collapsed
    assert 1 < rankme(torch.randn(50, 16) * torch.linspace(0.01, 1, 16)) < 16


def test_the_monitor_watches_without_changing_training_and_resumes(tiny_coco, derived, tmp_path):
    """--monitor TRAIN VAL: the k-NN top-1 and RankMe rows at every quarter of the schedule (and at
    each start's last step), once each across a resume, in metrics.jsonl and TensorBoard; the
    weights at the end equal a run's without the monitor, bit for bit (drop path draws from the RNG)."""
    crops = derived / "crops"
    watch = dict(monitor=(str(crops / "train"), str(crops / "val")), monitor_every=0.25, log_every=5)
    plain = Trainer(cfg(tiny_coco, tmp_path / "plain", max_steps=6, log_every=5))
    plain.fit()
    Trainer(cfg(tiny_coco, tmp_path / "watched", max_steps=3, **watch)).fit()
    watched = Trainer(cfg(tiny_coco, tmp_path / "watched", max_steps=6, **watch))
    watched.fit()
    a, b = params(plain), params(watched)
    assert all(torch.equal(a[k], b[k]) for k in a)
    interval = round(watched.total_steps * 0.25)
    rows = step_rows(tmp_path / "watched")
    measured = [r["step"] for r in rows if "monitor_knn_top1" in r]
    assert measured == sorted({s for s in range(1, 7) if s % interval == 0} | {3, 6}), (measured, interval)
    assert [r["step"] for r in rows] == sorted(set(measured) | {5})  # each step once: logged, measured or both
    features = len(watched.monitor.train) + len(watched.monitor.val)
    for r in rows:
        if "monitor_knn_top1" in r:
            assert 0 <= r["monitor_knn_top1"] <= 100 and 1 <= r["monitor_rankme"] <= min(features, 192)
    assert "knn_top1" in (tmp_path / "watched" / "log.txt").read_text()
    with pytest.raises(Exception, match="--monitor .*not a folder"):
        Trainer(cfg(tiny_coco, tmp_path / "bad", monitor=(str(crops / "train"), str(tmp_path / "nowhere"))))
    assert not (tmp_path / "bad").exists()
