"""cls/: fine-tuning, linear probing and k-NN on the bundled object crops."""
import importlib.util
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import step_rows

from semaim_core.safe_io import CheckpointError, load_file


@pytest.fixture
def encoder(demo_encoder):
    return demo_encoder[0]  # pretrained at 96 px: the 64 px runs below resize its position table


def common(derived, encoder, out):
    return ["--data", str(derived / "crops"), "--encoder", str(encoder), "--output-dir", str(out),
            "--img-size", "64", "--batch-size", "32", "--num-workers", "0", "--device", "cpu"]


@pytest.mark.slow
def test_finetune_writes_metrics_and_resumes_exactly(derived, encoder, tmp_path, monkeypatch):
    from cls.finetune import main

    args = common(derived, encoder, tmp_path / "a") + ["--warmup-epochs", "1", "--dtype", "fp32", "--epochs", "2"]
    first = main(args + ["--stop-after-epochs", "1"])  # interrupted after one epoch
    assert first["mode"] == "finetune" and first["epochs"] == 1 and 0 <= first["top1"] <= 100
    before = load_file(tmp_path / "a" / "checkpoint.pth")["model"]["blocks.0.attn.qkv.weight"]
    second = main(args)  # resumes at epoch 1
    assert second["epochs"] == 2
    rows = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    steps = step_rows(tmp_path / "a")  # the suite's schema: every step once, across the interruption
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1)) and {r["epoch"] for r in steps} == {0, 1}
    after = load_file(tmp_path / "a" / "checkpoint.pth")["model"]["blocks.0.attn.qkv.weight"]
    assert not torch.equal(before, after)
    metrics = json.loads((tmp_path / "a" / "cls_metrics.json").read_text())
    assert metrics["top1"] == second["top1"] and metrics["provenance"]["epoch"] == 2
    assert metrics["provenance"]["images"] == 150 and metrics["provenance"]["checkpoint"]["sha256"]
    again = main(args)  # a finished run, started again, only re-scores
    assert again["epochs"] == 2 and again["top1"] == second["top1"]
    assert len((tmp_path / "a" / "log.jsonl").read_text().splitlines()) == 2

    # the same recipe and seed in another directory, without the interruption: the same numbers
    straight = main(common(derived, encoder, tmp_path / "b")
                    + ["--warmup-epochs", "1", "--dtype", "fp32", "--epochs", "2"])
    assert (straight["top1"], straight["top5"]) == (second["top1"], second["top5"])
    rows_b = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in rows_b] == [r["train_loss"] for r in rows]

    # --save-every 2: killed in epoch 2, the run left no checkpoint at epoch 1 and starts again from 0,
    # logging each epoch once, with the same numbers
    from cls.engine import EpochTrainer

    calls, train_epoch = [], EpochTrainer.train_epoch

    def killed_in_epoch_2(self, log):
        calls.append(self.epoch)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train_epoch(self, log)

    sparse = common(derived, encoder, tmp_path / "c") + ["--warmup-epochs", "1", "--dtype", "fp32", "--epochs", "2",
                                                         "--save-every", "2"]
    monkeypatch.setattr(EpochTrainer, "train_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        main(sparse)
    monkeypatch.undo()
    assert calls == [0, 1] and not (tmp_path / "c" / "checkpoint.pth").exists()
    restarted = main(sparse)
    rows_c = [json.loads(x) for x in (tmp_path / "c" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows_c] == [1, 2]
    assert [r["train_loss"] for r in rows_c] == [r["train_loss"] for r in rows]
    assert (restarted["top1"], restarted["top5"]) == (second["top1"], second["top5"])


def test_cls_runs_do_not_mix(derived, encoder, tmp_path, demo_encoder):
    from cls.knn import main
    from semaim_core.rundir import RunDirError

    main(common(derived, encoder, tmp_path))
    other = tmp_path.parent / "other_encoder.pth"
    other.write_bytes(encoder.read_bytes())
    with pytest.raises(RunDirError, match=r"(?s)another recipe.*encoder: .*encoder.pth' -> .*other_encoder.pth'"):
        main(common(derived, other, tmp_path))
    main(common(derived, other, tmp_path) + ["--overwrite"])
    record = json.loads((tmp_path / "cls_metrics.json").read_text())
    assert record["encoder"] == str(other.resolve())
    assert record["provenance"]["checkpoint"]["path"] == str(other.resolve())


def test_linear_probe_trains_only_the_head(derived, encoder, tmp_path):
    from cls.linprobe import main

    result = main(common(derived, encoder, tmp_path) + ["--epochs", "1", "--warmup-epochs", "0", "--dtype", "fp32"])
    assert result["mode"] == "linprobe"
    sd = load_file(tmp_path / "checkpoint.pth")["model"]
    from semaim_core.layouts import read_encoder
    enc, _ = read_encoder(encoder)
    assert torch.equal(sd["blocks.1.mlp.fc2.weight"], enc["blocks.1.mlp.fc2.weight"])  # frozen
    assert "head.0.running_mean" in sd  # BatchNorm without affine, then the linear layer


def test_knn(derived, encoder, tmp_path):
    import shutil

    from cls.knn import main
    from semaim_core.knn import knn_classify
    from semaim_core.rundir import RunDirError
    from semaim_core.safe_io import save_atomic

    copy = tmp_path / "encoder.pth"
    shutil.copy(encoder, copy)
    result = main(common(derived, copy, tmp_path / "run"))
    assert result["mode"] == "knn" and 0 <= result["top1"] <= 100
    sweep = json.loads((tmp_path / "run" / "cls_metrics.json").read_text())["sweep"]  # every k and T, once
    assert [(e["k"], e["temperature"]) for e in sweep] == [(k, t) for k in (20, 10, 100, 200) for t in (0.07, 0.1, 0.2)]
    assert (result["k"], result["temperature"], result["top1"]) == (20, 0.07, sweep[0]["top1"])
    # another encoder copied over the same path is another recipe: the result is never credited to it
    other = load_file(copy)
    other["model"] = {k: v + 0.01 for k, v in other["model"].items()}
    save_atomic(other, copy)
    with pytest.raises(RunDirError, match=r"encoder.sha256: '[0-9a-f]{64}' -> '[0-9a-f]{64}'"):
        main(common(derived, copy, tmp_path / "run"))
    # a diverged encoder is an error, not the majority class's top-1, and it is named before a run starts
    other["model"]["blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
    save_atomic(other, copy)
    with pytest.raises(CheckpointError, match=r"NaN or infinite weights in 1 tensors \(\['blocks.0.mlp.fc1.weight'\]"):
        main(common(derived, copy, tmp_path / "nan"))
    assert not (tmp_path / "nan").exists()
    # a fit check scores the images it keeps as its memory bank (each finds itself), and says so
    fit = main(common(derived, encoder, tmp_path / "fit") + ["--fit-images", "6"])
    record = json.loads((tmp_path / "fit" / "cls_metrics.json").read_text())
    assert fit["top1"] == 100.0 and record["provenance"]["images"] == 6
    assert record["provenance"]["dataset"].endswith("crops/train")
    # the vote: nearest neighbours of a point that is itself in the training set
    train = torch.nn.functional.normalize(torch.randn(10, 4), dim=1)
    labels = torch.arange(10) % 3
    assert torch.equal(knn_classify(train, labels, train, 3, k=1).argmax(1), labels)


def test_the_knn_sweep_scores_each_k_and_temperature_as_its_own_vote_would():
    """One search for the largest k serves every smaller k: each (k, T) of the sweep equals the
    vote of that k and T alone, a k past the memory bank takes all of it, and the values differ."""
    from semaim_core.knn import knn_classify, knn_sweep

    torch.manual_seed(0)
    train, test = (torch.nn.functional.normalize(torch.randn(n, 16), dim=1) for n in (300, 90))
    train_y, test_y = torch.randint(0, 7, (300,)), torch.randint(0, 7, (90,))
    ks, temperatures = [20, 10, 100, 400], [0.07, 0.2]
    sweep = knn_sweep(train, train_y, test, test_y, 7, ks, temperatures, chunk=32)
    assert [(e["k"], e["temperature"]) for e in sweep] == [(k, t) for k in ks for t in temperatures]
    for e in sweep:
        top = knn_classify(train, train_y, test, 7, e["k"], e["temperature"]).topk(5, dim=1).indices
        assert e["top1"] == round(100 * int((top[:, 0] == test_y).sum()) / 90, 3), e
        assert e["top5"] == round(100 * int((top == test_y[:, None]).any(1).sum()) / 90, 3), e
    assert len({e["top1"] for e in sweep}) > 2


def test_missing_data_is_named(encoder, tmp_path):
    from cls.knn import main

    with pytest.raises(FileNotFoundError, match="train/<class>"):
        main(["--data", str(tmp_path), "--encoder", str(encoder), "--output-dir", str(tmp_path / "o"),
              "--device", "cpu"])


# ---------------------------------------------------------------------------- the authors' recipes
OFFICIAL = Path(os.environ.get("SEMAIM_OFFICIAL", Path(__file__).resolve().parents[2] / "shared" / "reference"
                               / "semaim_official"))


def official(relpath: str):
    """A module of the authors' code, loaded from its file (no sys.path or package-name clashes)."""
    path = OFFICIAL / relpath
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"semaim_official_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recipe(module, encoder, *extra):
    return module.parse_args(["--data", "unused", "--encoder", str(encoder), "--output-dir", "unused", *extra])


def test_finetune_defaults_are_the_authors(encoder):
    from cls import finetune

    args = recipe(finetune, encoder)
    assert (args.epochs, args.warmup_epochs, args.blr, args.min_lr, args.weight_decay, args.layer_decay, args.drop_path,
            args.reprob, args.remode, args.mixup, args.cutmix, args.smoothing, args.randaug, args.pool) == (
        100, 20, 5e-4, 1e-6, 0.05, 0.65, 0.1, 0.25, "pixel", 0.8, 1.0, 0.1, "rand-m9-mstd0.5-inc1", "avg")
    model, optimizer = finetune.model_and_optimizer(args, num_classes=10)
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["betas"] == (0.9, 0.999)
    assert optimizer.defaults["lr"] == pytest.approx(5e-4 * 64 / 256)
    assert model.global_pool == "avg" and isinstance(model.norm, torch.nn.Identity)  # mean of patches + fc_norm
    assert isinstance(model.fc_norm, torch.nn.LayerNorm) and 0 < model.head.weight.std() < 3e-5  # std 2e-5
    train, val = finetune.transforms_for(args)
    erasing = [t for t in train.transforms if type(t).__name__ == "RandomErasing"]
    assert len(erasing) == 1 and erasing[0].mode == "pixel" and erasing[0].probability == 0.25
    assert "Resize(size=256" in str(val) and "CenterCrop(size=(224, 224))" in str(val)

    datasets, lr_decay = official("datasets/datasets.py"), official("util/lr_decay.py")
    if datasets is None:
        pytest.skip(f"no official checkout at {OFFICIAL}: compared with the written-out recipe only")
    authors_args = SimpleNamespace(input_size=224, color_jitter=None, aa="rand-m9-mstd0.5-inc1", reprob=0.25,
                                   remode="pixel", recount=1)
    assert str(train) == str(datasets.build_transform(True, authors_args))
    assert str(val) == str(datasets.build_transform(False, authors_args))
    theirs = {id(p): (g["lr_scale"], g["weight_decay"])
              for g in lr_decay.param_groups_lrd(model, 0.05, model.no_weight_decay(), 0.65) for p in g["params"]}
    ours = {id(p): (g["lr_scale"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert ours[k] == pytest.approx(theirs[k])


def test_linear_probe_defaults_are_the_authors(encoder):
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torchvision import transforms

    from cls import linprobe

    args = recipe(linprobe, encoder)
    assert (args.epochs, args.warmup_epochs, args.blr, args.weight_decay, args.batch_size, args.pool) == (
        90, 0, 0.1, 0.0, 512, "cls")  # 512 per process x 8 = the effective 4096
    model, optimizer = linprobe.model_and_optimizer(args, num_classes=10)
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["momentum"] == 0.9
    assert optimizer.defaults["weight_decay"] == 0 and optimizer.defaults["lr"] == pytest.approx(0.1 * 512 / 256)
    bn = model.head[0]
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.1.weight", "head.1.bias"]
    assert model.global_pool == "token" and isinstance(model.norm, torch.nn.LayerNorm)  # --cls_token
    train, val = linprobe.transforms_for(args)
    expected = transforms.Compose([  # main_linprobe.py's transform_train and transform_val
        transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC), transforms.RandomCrop((224, 224)),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    expected_val = transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(224),
        transforms.ToTensor(), transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
    assert str(train) == str(expected).replace("[0.485, 0.456, 0.406]", str(IMAGENET_DEFAULT_MEAN)).replace(
        "[0.229, 0.224, 0.225]", str(IMAGENET_DEFAULT_STD))
    assert str(val) == str(expected_val)


def test_knn_defaults_are_the_authors(encoder):
    from cls import knn

    args = recipe(knn, encoder)
    assert (args.k[0], args.temperature[0], args.pool) == (20, 0.07, "avg")  # the headline: DINO's default
    assert sorted(args.k) == [10, 20, 100, 200]  # DINO's k list
    assert args.temperature == [0.07, 0.1, 0.2]  # the efficient-probing leaderboard's
    model = knn.feature_model(args).eval()
    assert isinstance(model.norm, torch.nn.Identity)
    assert torch.equal(model.fc_norm.weight, torch.ones(model.embed_dim)) and not model.fc_norm.bias.any()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        tokens = model.forward_features(images)
        expected = torch.nn.functional.layer_norm(tokens[:, 1:].mean(1), (model.embed_dim,), eps=1e-6)
        torch.testing.assert_close(model(images), expected)  # mean of patch tokens + LayerNorm without affine


def test_large_recipe_is_maes_vit_l_and_runs(derived, encoder, tmp_path):
    from cls import finetune

    args = recipe(finetune, encoder, "--recipe", "large")
    assert (args.epochs, args.warmup_epochs, args.blr, args.layer_decay, args.drop_path) == (50, 5, 1e-3, 0.75, 0.2)
    assert recipe(finetune, encoder, "--recipe", "large", "--epochs", "3").epochs == 3  # flags still override
    result = finetune.main(common(derived, encoder, tmp_path) + ["--recipe", "large", "--epochs", "1",
                                                                  "--warmup-epochs", "0", "--dtype", "fp32"])
    assert result["epochs"] == 1 and 0 <= result["top1"] <= 100


# ---------------------------------------------------------------------------- AIM's attentive probe
def test_attentive_probe_defaults_are_aims_recipe(encoder):
    """The defaults equal the recipe cls/attnprobe.py documents (AIM's paper and code), and the head
    computes AIM's attention pooling on the mean of the last blocks' patch tokens."""
    from cls import attnprobe

    args = recipe(attnprobe, encoder)
    documented = dict(epochs=100, warmup_epochs=5, lr_grid=[1e-4, 3e-4, 5e-4, 1e-3, 1.5e-3, 2e-3, 4e-3], min_lr=1e-5,
                      weight_decay=[0.1], clip_grad=3.0, probe_layers="last6", color_jitter=0.3,
                      randaug="rand-m9-mstd0.5-inc1", mixup=0.8, cutmix=1.0, smoothing=0.1, batch_size=128,
                      preset="xtra")
    assert {k: getattr(args, k) for k in documented} == documented
    doc = attnprobe.__doc__
    for text in ("AdamW, betas (0.9, 0.999)", "weight decay 0.1",
                 "1e-4, 3e-4, 5e-4, 1e-3, 1.5e-3, 2e-3, 4e-3 at batch 1024", "100 epochs, 5 warm-up, cosine to 1e-5",
                 "gradient clip    3.0", "rand-m9-mstd0.5-inc1", "mixup 0.8, cutmix 1.0, label smoothing 0.1",
                 "the last 6 blocks", "Resize 256 + CenterCrop 224"):
        assert text in doc, text

    args.probe_layers = "last2"  # the test encoder has 4 blocks
    model, optimizer = attnprobe.model_and_optimizer(args, num_classes=10)
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["betas"] == (0.9, 0.999)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([lr * 128 / 1024 for lr in documented["lr_grid"]])
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.1} and model.blocks == [2, 3]
    assert [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("heads.")] == []
    head = model.heads[0]
    assert not head.bn.affine and head.bn.eps == 1e-6 and head.query.shape == (1, 1, model.encoder.embed_dim)
    assert head.k.bias is None and head.v.bias is None and head.linear.bias is None
    assert all(torch.equal(h.k.weight, head.k.weight) for h in model.heads)  # one initial draw for the grid
    model.eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        x = model.encoder.patch_embed(images)
        x = model.encoder.norm_pre(model.encoder._pos_embed(x))
        outs = []
        for block in model.encoder.blocks:
            x = block(x)
            outs.append(x[:, 1:])  # the patch tokens, without [CLS], before the final norm
        tokens = torch.stack(outs[-2:]).mean(0)
        torch.testing.assert_close(model.features(images), tokens)
        t = (tokens - head.bn.running_mean) / torch.sqrt(head.bn.running_var + 1e-6)  # BatchNorm, eval
        h = model.encoder.blocks[0].attn.num_heads
        split = lambda y: y.reshape(2, -1, h, y.shape[-1] // h).transpose(1, 2)  # noqa: E731
        q, k, v = split(head.query.expand(2, -1, -1)), split(head.k(t)), split(head.v(t))
        attention = (q @ k.transpose(-1, -2) / (k.shape[-1] ** 0.5)).softmax(-1)
        pooled = (attention @ v).transpose(1, 2).reshape(2, -1)
        torch.testing.assert_close(model(images)[0], head.linear(pooled))
    train, val = attnprobe.transforms_for(args)
    text = str(train)
    assert "RandomResizedCropAndInterpolation(size=(224, 224), scale=(0.08, 1.0), ratio=(0.75, 1.3333)" in text
    assert "interpolation=bicubic" in text and "RandAugment" in text and "RandomErasing" not in text
    assert "Resize(size=256" in str(val) and "CenterCrop(size=(224, 224))" in str(val)


def test_the_aimv2_preset_is_table_a2_and_a_flag_beside_it_wins(encoder):
    """AIMv2's Table A2: lr {5e-5 ... 2e-3} x weight decay {0.05, 0.1}, no mixup, cutmix or label
    smoothing, the last block; one head per lr x weight decay, each its own optimizer group."""
    from cls import attnprobe

    args = recipe(attnprobe, encoder, "--preset", "aimv2")
    assert (args.lr_grid, args.weight_decay, args.mixup, args.cutmix, args.smoothing, args.probe_layers) == (
        [5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3], [0.05, 0.1], 0.0, 0.0, 0.0, "last1")
    assert "lr grid 5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3, weight decay grid 0.05, 0.1" in attnprobe.__doc__
    model, optimizer = attnprobe.model_and_optimizer(args, num_classes=10)
    assert len(model.heads) == 14 and model.blocks == [3]
    assert [(g["lr"] * 1024 / 128, g["weight_decay"]) for g in optimizer.param_groups] == pytest.approx(
        [(lr, wd) for lr in args.lr_grid for wd in (0.05, 0.1)])
    assert recipe(attnprobe, encoder, "--preset", "aimv2", "--mixup", "0.8").mixup == 0.8


@pytest.mark.parametrize("spec, depth, blocks", [("last6", 12, [6, 7, 8, 9, 10, 11]), ("last1", 24, [23]),
                                                 ("mid6", 24, [12, 13, 14, 15, 16, 17]),  # ml-aim's AIM-1B / 3B
                                                 ("mid6", 12, [6, 7, 8, 9, 10, 11]), ("3,5,7", 12, [3, 5, 7]),
                                                 ("4,", 12, [4])])
def test_probe_layers_name_the_blocks_the_head_reads(spec, depth, blocks):
    from cls.attnprobe import probe_blocks

    assert probe_blocks(spec, depth) == blocks


@pytest.mark.parametrize("spec, message", [("6", "give last6"), ("last13", r"do not fit an encoder of 12 blocks"),
                                           ("mid8", "do not fit"), ("3,3", "each once"), ("last0", "do not fit")])
def test_probe_layers_that_cannot_be_read_are_named(spec, message):
    from cls.attnprobe import probe_blocks
    from semaim_core.errors import SettingError

    with pytest.raises(SettingError, match=message):
        probe_blocks(spec, 12)


@pytest.mark.slow
def test_attentive_probe_grid_heads_are_solo_runs_and_resume_exactly(derived, encoder, tmp_path):
    """Two lrs side by side train, head for head, what each lr trains alone; an interrupted run resumes
    to the same weights; the metrics file keeps each head's top-1 and the best one's."""
    from cls.attnprobe import main

    args = common(derived, encoder, tmp_path / "grid") + ["--epochs", "2", "--warmup-epochs", "1", "--probe-layers",
                                                          "last2", "--dtype", "fp32", "--lr-grid", "1e-3", "4e-2",
                                                          "--weight-decay", "0.1", "0"]
    main(args + ["--stop-after-epochs", "1"])
    grid = main(args)  # resumed at epoch 1
    assert grid["mode"] == "attnprobe" and grid["epochs"] == 2 and len(grid["head_top1"]) == 4
    assert grid["top1"] == max(grid["head_top1"]) == grid["head_top1"][grid["best_head"]]
    solo = main(common(derived, encoder, tmp_path / "solo") + ["--epochs", "2", "--warmup-epochs", "1",
                                                               "--probe-layers", "last2", "--dtype", "fp32",
                                                               "--lr-grid", "4e-2", "--weight-decay", "0"])
    assert grid["grid"][3] == dict(lr=4e-2, weight_decay=0.0) and solo["top1"] == grid["head_top1"][3]
    theirs, ours = (load_file(tmp_path / d / "checkpoint.pth")["model"] for d in ("solo", "grid"))
    for name in ("query", "k.weight", "v.weight", "linear.weight", "bn.running_mean"):
        assert torch.equal(ours[f"heads.3.{name}"], theirs[f"heads.0.{name}"]), name
    assert not torch.equal(ours["heads.2.linear.weight"], ours["heads.3.linear.weight"])  # the weight decay counts
    metrics = json.loads((tmp_path / "grid" / "cls_metrics.json").read_text())
    assert metrics["head_top1"] == grid["head_top1"] and metrics["provenance"]["config"]["lr_grid"] == [1e-3, 4e-2]
    assert (metrics["preset"], metrics["probe_layers"], metrics["probe_blocks"]) == ("xtra", "last2", [2, 3])


@pytest.mark.slow
def test_the_number_of_loader_workers_does_not_change_the_result(derived, encoder, tmp_path):
    """Fine-tuning (RandAugment, random crops, RandomErasing, mixup) with 0 and with 2 loader workers:
    each image's augmentation is drawn from its own (seed, epoch, index), so the weights are equal."""
    from cls.finetune import main

    runs = {}
    for workers in ("0", "2"):
        argv = common(derived, encoder, tmp_path / f"w{workers}")
        argv[argv.index("--num-workers") + 1] = workers
        main(argv + ["--epochs", "1", "--dtype", "fp32", "--fit-images", "64"])
        runs[workers] = load_file(tmp_path / f"w{workers}" / "checkpoint.pth")["model"]
    assert all(torch.equal(runs["0"][k], runs["2"][k]) for k in runs["0"])


# ---------------------------------------------------------------------------- robustness sets
def robustness_folders(derived, root):
    """Tiny copies of the bundled crops in each set's standard layout (see cls/robustness.py): V2's
    class-index folders, ReaL's renamed val/ images and real.json (two labels, one, none), A's and
    R's subset of classes, Sketch's every class."""
    import shutil

    val = derived / "crops" / "val"
    classes = sorted(d.name for d in val.iterdir())
    images = {c: sorted((val / c).iterdir())[:2] for c in classes}
    for name, picked in (("v2", classes), ("a", classes[:3]), ("r", classes[3:6]), ("sketch", classes)):
        for c in picked:
            folder = root / name / (str(classes.index(c)) if name == "v2" else c)
            folder.mkdir(parents=True)
            for image in images[c]:
                shutil.copy(image, folder / image.name)
    real, n = [], 0
    for i, c in enumerate(classes):
        (root / "imagenet" / "val" / c).mkdir(parents=True)
        for image in images[c]:
            n += 1
            shutil.copy(image, root / "imagenet" / "val" / c / f"ILSVRC2012_val_{n:08d}.JPEG")
            real.append([i, (i + 1) % len(classes)] if n % 3 == 0 else [] if n % 3 == 1 else [i])
    (root / "real.json").write_text(json.dumps(real))
    (root / "imagenet" / "train").symlink_to(derived / "crops" / "train")  # ImageNet's layout: train/ beside val/
    return classes, {"imagenet-v2": root / "v2", "imagenet-real": root / "real.json", "imagenet-a": root / "a",
                     "imagenet-r": root / "r", "imagenet-sketch": root / "sketch"}


def test_robustness_sets_map_their_layouts_to_the_classifiers_classes(derived, tmp_path):
    """Each set scored by a fixed classifier equals the score worked out image by image: V2's index
    folders, ReaL's label lists (any label counts; no label: left out), A's and R's prediction among
    their own classes only, Sketch's among all."""
    from pathlib import Path
    from types import SimpleNamespace

    from PIL import Image

    from cls.robustness import eval_set, parse_eval_sets, score
    from semaim_core.data import eval_transform
    from semaim_core.errors import DataError, SettingError

    classes, paths = robustness_folders(derived, tmp_path)
    class Colours(torch.nn.Module):  # a fixed classifier of the images' mean colour
        def __init__(self):
            super().__init__()
            self.weights = torch.randn(3, len(classes), generator=torch.Generator().manual_seed(0))

        def forward(self, images):
            return images.mean((2, 3)) @ self.weights

    model = Colours()

    transform = eval_transform(64)
    args = SimpleNamespace(batch_size=4, num_workers=0, data=str(tmp_path / "imagenet"),
                           eval_sets=[f"{k}={v}" for k, v in paths.items()])
    real = json.loads(paths["imagenet-real"].read_text())
    for name, path in parse_eval_sets(args.eval_sets).items():
        dataset, subset = eval_set(name, path, classes, transform, args.data + "/val")
        expected, count = 0, 0
        root = tmp_path / "imagenet" / "val" if name == "imagenet-real" else path
        for file in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            label = (real[int(file.stem[-8:]) - 1] if name == "imagenet-real" else
                     [int(file.parent.name)] if name == "imagenet-v2" else [classes.index(file.parent.name)])
            if not label:
                continue
            logits = model(transform(Image.open(file).convert("RGB"))[None])[0]
            allowed = sorted(classes.index(d.name) for d in Path(path).iterdir()) if name in (
                "imagenet-a", "imagenet-r") else list(range(len(classes)))
            pred = allowed[int(logits[allowed].argmax())]
            expected, count = expected + (pred in label), count + 1
        assert len(dataset) == count and (subset is None) == (name not in ("imagenet-a", "imagenet-r")), name
        assert score(model, dataset, subset, args, torch.device("cpu"), 1, 0) == round(100 * expected / count, 3), name
    real_set, _ = eval_set("imagenet-real", str(paths["imagenet-real"]), classes, transform, args.data + "/val")
    assert len(real_set) == 18  # 10 of the 28 have no label
    with pytest.raises(SettingError, match="give NAME=PATH with NAME one of imagenet-v2"):
        parse_eval_sets(["imagenet-c=/x"])
    with pytest.raises(DataError, match="are not training classes"):
        eval_set("imagenet-a", str(paths["imagenet-v2"]), classes, transform, args.data + "/val")
    with pytest.raises(DataError, match="not a folder of class folders"):
        parse_eval_sets([f"imagenet-r={paths['imagenet-real']}"])


def test_evaluation_sets_are_sharded_so_each_image_is_scored_once():
    from cls.data import shard

    images = list(range(7503))  # ImageNet-A's 7500 and a few: not a multiple of the 8 ranks
    parts = [list(shard(images, rank, 8)) for rank in range(8)]
    assert sorted(i for part in parts for i in part) == images and shard(images, 0, 1) is images


def test_a_probe_scores_the_robustness_sets_and_the_tables_show_them(derived, encoder, tmp_path):
    from cls.linprobe import main
    from semaim_core.errors import DataError
    from tools.lib.results import collect, columns

    _, paths = robustness_folders(derived, tmp_path / "sets")
    out = tmp_path / "lin"
    argv = common(derived, encoder, out) + ["--epochs", "1", "--dtype", "fp32", "--eval-sets",
                                            *(f"{k}={v}" for k, v in paths.items())]
    with pytest.raises(DataError, match=r"000000\d+.jpg: ImageNet-ReaL scores val/ images named ILSVRC2012_val"):
        main(argv)  # the crops' val/ is not ImageNet's: named before training
    assert not out.exists()
    argv[argv.index("--data") + 1] = str(tmp_path / "sets" / "imagenet")
    result = main(argv)
    scored = json.loads((out / "cls_metrics.json").read_text())["eval_sets"]
    assert scored == result["eval_sets"] and list(scored) == list(paths)
    assert [scored[k]["images"] for k in paths] == [28, 18, 6, 6, 28]
    labels = [label for _, label in columns(collect([("lin", [str(out)])]))]
    assert labels == ["top-1 (lin) [ImageNet-A]", "top-1 (lin) [ImageNet-R]", "top-1 (lin) [ImageNet-ReaL]",
                      "top-1 (lin) [ImageNet-Sketch]", "top-1 (lin) [ImageNet-V2]", "top-1 (lin) [imagenet val]"]


def _evaluate_on_rank(rank, world, init, out):
    import torch.distributed as dist

    from cls.data import loader
    from cls.engine import evaluate

    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    data = torch.utils.data.TensorDataset(torch.randn(7, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0]))
    result = evaluate(model, loader(data, 2, 0, world, rank, False, 0, False), torch.device("cpu"), world)
    if rank == 0:
        out.put(result)
    dist.destroy_process_group()


@pytest.mark.slow(seconds=15)
def test_two_ranks_score_seven_images_as_one_process_does(tmp_path):
    """Evaluation under DDP: 7 images on 2 ranks are 4 + 3, each scored once (a DistributedSampler
    would pad to 4 + 4 and count one image twice), and the top-1 equals one process's."""
    import torch.multiprocessing as mp

    from cls.data import loader
    from cls.engine import evaluate

    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_evaluate_on_rank, args=(2, tmp_path / "init", queue), nprocs=2)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    data = torch.utils.data.TensorDataset(torch.randn(7, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0]))
    alone = evaluate(model, loader(data, 2, 0, 1, 0, False, 0, False), torch.device("cpu"), 1)
    assert queue.get() == alone
