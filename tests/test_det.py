"""det/: the ViTDet LazyConfigs, the verified backbone load and a real train + COCO evaluation."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import step_rows
from detectron2.config import LazyConfig, instantiate

from semaim_core import build_model
from semaim_core.export import export_encoder
from semaim_core.rundir import RunDirError, file_digest
from semaim_core.safe_io import CheckpointError, load_file, save_atomic

CONFIGS = "det/configs"
REPO = Path(__file__).resolve().parents[1]


def load(name, *overrides):
    return LazyConfig.apply_overrides(LazyConfig.load(f"{CONFIGS}/{name}.py"), list(overrides))


@pytest.fixture
def tiny_encoder(demo_encoder):
    return demo_encoder


def test_recipes():
    b = load("vitdet_semaim")
    assert b.dataloader.train.total_batch_size == 64 and b.optimizer.lr == 8e-5 and b.optimizer.weight_decay == 0.1
    assert b.train.amp.enabled and b.model.backbone.net.drop_path_rate == 0.1 and b.model.backbone.net.img_size == 1024
    assert instantiate(b.dataloader.train.mapper.augmentations)[1].target_height == 1024  # LSJ 1024
    assert b.train.max_iter * 64 / 117_266 == pytest.approx(100, abs=0.01)  # 100 epochs
    schedule = instantiate(b.lr_multiplier)
    assert schedule._lengths[0] * b.train.max_iter == pytest.approx(0.25 * 117_266 / 64, abs=1)  # 0.25-epoch warm-up
    assert schedule._schedulers[1]._milestones == [round(b.train.max_iter * f) for f in (0.889, 0.963)]
    ab = load("vitdet_semaim_ablation")
    assert ab.dataloader.train.total_batch_size == 16
    assert ab.train.max_iter * 16 / 117_266 == pytest.approx(12.5, abs=0.01)
    schedule = instantiate(ab.lr_multiplier)  # follows max_iter and the batch without restating them
    assert schedule._lengths[0] * ab.train.max_iter == pytest.approx(0.25 * 117_266 / 16, abs=1)
    assert schedule._schedulers[1]._milestones == [round(ab.train.max_iter * f) for f in (0.889, 0.963)]
    tiny = load("vitdet_semaim_tiny_coco")  # the image size follows the backbone's
    assert instantiate(tiny.dataloader.train.mapper.augmentations)[2].crop_size == (256, 256)
    large = load("vitdet_semaim_large")
    assert (large.model.backbone.net.depth, large.model.backbone.net.embed_dim) == (24, 1024)
    assert instantiate(large.optimizer.params.lr_factor_func).keywords == dict(num_layers=24, lr_decay_rate=0.8)


def test_layer_decay_follows_the_backbone_depth():
    cfg = load("vitdet_semaim")
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    factor, decay = {}, {}
    for g in optimizer.param_groups:
        for p in g["params"]:
            factor[id(p)], decay[id(p)] = g["lr"] / cfg.optimizer.lr, g["weight_decay"]
    named = dict(model.named_parameters())
    depth = len(model.backbone.net.blocks)
    assert depth == cfg.model.backbone.net.depth == 12
    for name, p in named.items():
        if ".blocks." in name:
            i = int(name.split(".blocks.")[1].split(".")[0])
            assert factor[id(p)] == pytest.approx(0.7 ** (depth - i)), name
        elif name.startswith(("backbone.net.patch_embed", "backbone.net.pos_embed")):
            assert factor[id(p)] == pytest.approx(0.7 ** (depth + 1)), name
        else:  # pyramid, RPN and ROI heads
            assert factor[id(p)] == pytest.approx(1.0), name
    assert decay[id(named["backbone.net.pos_embed"])] == 0.0
    assert decay[id(named["backbone.net.blocks.0.attn.qkv.weight"])] == 0.1


def test_every_backbone_weight_arrives(tiny_encoder):
    from det.checkpoint import load_backbone

    path, sd = tiny_encoder
    model = instantiate(load("vitdet_semaim_tiny_coco").model)
    report = load_backbone(model, str(path))
    net = model.backbone.net
    own = net.state_dict()
    for k, v in sd.items():
        if k in ("cls_token", "norm.weight", "norm.bias"):
            continue
        assert torch.equal(own[k], v), k
    assert report["loaded"] == len(sd) - 3
    assert all(k.endswith(("rel_pos_h", "rel_pos_w")) for k in report["left_at_init"])
    assert all(float(own[k].abs().sum()) == 0 for k in report["left_at_init"])


def test_position_table_is_resized_for_another_pretraining_size(tiny_encoder):
    from det.checkpoint import load_backbone

    path, sd = tiny_encoder
    model = instantiate(load("vitdet_semaim_tiny_coco", "model.backbone.net.pretrain_img_size=224").model)
    load_backbone(model, str(path))
    assert model.backbone.net.pos_embed.shape == (1, 197, 192)


def run_main(*argv):
    from det.train_net import main, parse_args

    return main(parse_args(list(argv)))


@pytest.mark.slow(seconds=50)
def test_tiny_config_trains_evaluates_and_writes_ap(tiny_encoder, tmp_path):
    path, _ = tiny_encoder
    out = tmp_path / "run"
    config = ["--config", f"{CONFIGS}/vitdet_semaim_tiny_coco.py"]
    common = [f"train.output_dir={out}", "dataloader.train.num_workers=0", "dataloader.test.num_workers=0"]
    fit = "dataloader.test.dataset.names=tiny_coco_fit"  # in-training evaluations on 4 images; --eval-only on 50
    run_main(*config, *common, fit, f"train.init_checkpoint={path}", "train.max_iter=5", "train.stop_after_iter=3",
             "train.eval_period=3")
    metrics = json.loads((out / "det_metrics.json").read_text())
    assert metrics["task"] == "det" and metrics["dataset"] == "tiny_coco_fit" and metrics["iteration"] == 3
    for kind in ("bbox", "segm"):
        assert isinstance(metrics[kind]["AP"], float) and 0 <= metrics[kind]["AP"] <= 100
        assert "AP-person" in metrics[kind]
    lines = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    assert any("total_loss" in x for x in lines)
    assert (out / "model_final.pth").is_file() and list(out.glob("events.out.tfevents.*"))

    # --resume (the same command) continues from the last checkpoint; --eval-only scores the trained
    # detector, replacing the run's own result only when asked
    run_main("--resume", *config, *common, fit, f"train.init_checkpoint={path}", "train.max_iter=5",
             "train.eval_period=100")
    assert "Starting training from iteration 3" in (out / "log.txt").read_text()
    final = f"train.init_checkpoint={out / 'model_final.pth'}"
    inferences = (out / "log.txt").read_text().count("Start inference")
    with pytest.raises(RunDirError, match="holds the result of another evaluation.*--overwrite"):
        run_main("--eval-only", *config, *common, final)
    assert (out / "log.txt").read_text().count("Start inference") == inferences  # refused before inference
    # the 50 val images, each with its 10 best detections instead of 100: the pasting of masks was most of the time
    run_main("--eval-only", "--overwrite", *config, *common, final,
             "+model.roi_heads.box_predictor.test_topk_per_image=10")
    metrics = json.loads((out / "det_metrics.json").read_text())
    source = metrics["provenance"]
    # the iterations the scored checkpoint trained (model_final.pth: all 5), as its training evaluations count them
    assert metrics["iteration"] == 5 and source["iteration"] == 5
    assert source["checkpoint"]["sha256"] == file_digest(out / "model_final.pth")
    assert metrics["dataset"] == "tiny_coco_val" and source["images"] == 50
    assert source["config"].endswith("vitdet_semaim_tiny_coco.py")


@pytest.mark.slow
def test_resume_is_strict_and_keeps_the_recipe(tiny_encoder, tmp_path):
    path = tmp_path / "encoder.pth"
    shutil.copy(tiny_encoder[0], path)
    out = tmp_path / "run"
    args = ["--config", f"{CONFIGS}/vitdet_semaim_tiny_coco.py", f"train.output_dir={out}",
            f"train.init_checkpoint={path}",
            "dataloader.train.num_workers=0", "dataloader.test.num_workers=0", "train.eval_period=100",
            "train.checkpointer.period=1", "dataloader.test.dataset.names=tiny_coco_fit"]
    run_main(*args, "train.max_iter=3", "train.stop_after_iter=2")
    with pytest.raises(RunDirError, match=r"(?s)another recipe.*optimizer.lr: 0.0002 -> 0.001"):
        run_main("--resume", *args, "train.max_iter=3", "optimizer.lr=0.001")
    with pytest.raises(RunDirError, match="already holds a run"):
        run_main(*args, "train.max_iter=3")
    with pytest.raises(KeyError, match="unknown config key 'train.max_iters'.*did you mean 'train.max_iter'"):
        run_main("--resume", *args, "train.max_iters=3")
    # train.max_iter sets the lr schedule: a longer run is another recipe, not a later stopping point
    with pytest.raises(RunDirError, match=r"(?s)another recipe.*train.max_iter: 3 -> 40"):
        run_main("--resume", *args, "train.max_iter=40")
    # the encoder the run started from is part of the recipe by content, not by path
    torch.manual_seed(1)
    save_atomic(export_encoder(build_model("semaim_vit_tiny_patch16", img_size=96, depth=4)), path)
    with pytest.raises(RunDirError, match=r"train.init_checkpoint.sha256: '[0-9a-f]{64}' -> '[0-9a-f]{64}'"):
        run_main("--resume", *args, "train.max_iter=3")
    shutil.copy(tiny_encoder[0], path)
    run_main("--resume", *args, "train.max_iter=3")
    iters = [json.loads(x)["iteration"] for x in (out / "metrics.json").read_text().splitlines() if "total_loss" in x]
    assert iters[-1] == 2 and "Starting training from iteration 2" in (out / "log.txt").read_text()  # 0-based: 3rd

    ckpt = load_file(out / "model_final.pth")  # the safe loader reads what det wrote
    del ckpt["model"]["roi_heads.box_predictor.cls_score.weight"]
    torch.save(ckpt, out / "model_final.pth")
    with pytest.raises(CheckpointError, match="does not fit the model.*cls_score.weight"):
        run_main("--resume", *args, "train.max_iter=3")
    (out / "last_checkpoint").write_text("")
    with pytest.raises(CheckpointError, match="last_checkpoint is empty"):
        run_main("--resume", *args, "train.max_iter=3")


@pytest.mark.slow
def test_a_killed_run_resumes_exactly_and_logs_each_iteration_once(tiny_encoder, tmp_path):
    """Killed after iteration 3 ran (and was logged) but before its checkpoint was written, resumed
    from iteration 2: the final weights equal an uninterrupted run's bit for bit (drop path, ROI
    sampling and LSJ all draw random numbers at every iteration)."""
    path, _ = tiny_encoder
    common = ["--config", f"{CONFIGS}/vitdet_semaim_tiny_coco.py", f"train.init_checkpoint={path}",
              "dataloader.train.num_workers=0", "dataloader.test.num_workers=0", "train.eval_period=100",
              "train.checkpointer.period=1", "train.log_period=1", "train.max_iter=4",
              "dataloader.train.total_batch_size=2", "dataloader.test.dataset.names=tiny_coco_fit"]
    straight, run = tmp_path / "straight", tmp_path / "run"
    run_main(*common, f"train.output_dir={straight}", "train.eval_period=2")  # validation runs on an RNG copy
    run_main(*common, f"train.output_dir={run}", "train.stop_after_iter=3")
    for name in ("model_final.pth", "model_0000002.pth"):
        (run / name).unlink()
    (run / "last_checkpoint").write_text("model_0000001.pth")
    run_main("--resume", *common, f"train.output_dir={run}")
    a, b = load_file(straight / "model_final.pth")["model"], load_file(run / "model_final.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [[json.loads(x) for x in (d / "metrics.json").read_text().splitlines()] for d in (straight, run)]
    assert [r["iteration"] for r in rows[1] if "total_loss" in r] == [0, 1, 2, 3]
    assert [r["lr"] for r in rows[0] if "lr" in r] == [r["lr"] for r in rows[1] if "lr" in r]  # one schedule
    steps = [step_rows(d) for d in (straight, run)]  # the suite's schema, each iteration once
    assert [r["step"] for r in steps[1]] == [1, 2, 3, 4] and [r["loss"] for r in steps[0]] == [r["loss"] for r in
                                                                                          steps[1]]
    assert {"loss_cls", "loss_mask"} <= set(steps[1][0]["losses"]) and steps[1][0]["epoch"] is None
    from tools.compare_loss_curves import read_run

    assert read_run(run)[0] == {r["step"]: r["loss"] for r in steps[1]}  # one script reads any trainer's run


def test_overrides_keep_unicode_paths_and_the_kind_of_each_value():
    """hydra's override lexer takes ASCII alone: a path such as /data/données is quoted for it."""
    from det.train_net import apply_overrides
    from semaim_core.errors import SettingError

    cfg = apply_overrides(load("vitdet_semaim_tiny_coco"), ["train.output_dir=/tmp/dét_ü/l'été", "train.max_iter=3"])
    assert cfg.train.output_dir == "/tmp/dét_ü/l'été" and cfg.train.max_iter == 3
    with pytest.raises(SettingError, match=r"train.max_iter='abc': train.max_iter takes a whole number"):
        apply_overrides(load("vitdet_semaim_tiny_coco"), ["train.max_iter=abc"])
    with pytest.raises(SettingError, match=r"optimizer.lr='fast': optimizer.lr takes a number"):
        apply_overrides(load("vitdet_semaim_tiny_coco"), ["optimizer.lr=fast"])
    assert apply_overrides(load("vitdet_semaim_tiny_coco"), ["optimizer.lr=1"]).optimizer.lr == 1  # an int is a number


def test_bad_inputs_are_named(tiny_encoder, tmp_path):
    from det.checkpoint import load_backbone, load_detector
    from det.data import check_datasets

    path, _ = tiny_encoder
    model = instantiate(load("vitdet_semaim_tiny_coco").model)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_backbone(model, str(tmp_path / "missing.pth"))
    with pytest.raises(CheckpointError, match="not a trained detector"):
        load_detector(model, str(path))
    save_atomic({"model": {"backbone.net.blocks.0.attn.qkv.weight": torch.zeros(3)}}, tmp_path / "d2.pth")
    with pytest.raises(CheckpointError, match="looks like a detectron2 model"):
        load_backbone(model, str(tmp_path / "d2.pth"))
    big = build_model("semaim_vit_small_patch16", img_size=96, depth=4)  # wrong width
    save_atomic(export_encoder(big), tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match="shape of"):
        load_backbone(model, str(tmp_path / "small.pth"))

    # detectron2 registers coco_2017_* under $DETECTRON2_DATASETS (default ./datasets): absent here
    with pytest.raises(FileNotFoundError, match=r"coco/\{annotations/instances_\{train,val\}2017.json"):
        check_datasets("coco_2017_val")
    with pytest.raises(KeyError, match="not registered"):
        check_datasets("my_coco")


@pytest.mark.slow(seconds=20)
def test_a_start_without_its_inputs_names_them_all_leaves_nothing_and_can_be_rerun(tiny_encoder, tmp_path):
    from semaim_core.errors import InputErrors

    out = tmp_path / "run"
    start = ["--config", f"{CONFIGS}/vitdet_semaim_tiny_coco.py", f"train.output_dir={out}", "train.max_iter=1",
             "train.eval_period=0", "dataloader.train.num_workers=0"]
    with pytest.raises(InputErrors) as err:  # no COCO under ./datasets, no encoder
        run_main(*start, "dataloader.train.dataset.names=coco_2017_train",
                 f"train.init_checkpoint={tmp_path / 'encoder.pth'}")
    lines = str(err.value).splitlines()
    assert lines[0] == "2 inputs cannot be used:" and "dataset 'coco_2017_train' expects" in lines[1]
    assert lines[2] == f"  - train.init_checkpoint {tmp_path / 'encoder.pth'} does not exist"
    assert not out.exists()  # nothing claimed: the same command, inputs fixed, starts
    shutil.copy(tiny_encoder[0], tmp_path / "encoder.pth")
    run_main(*start, f"train.init_checkpoint={tmp_path / 'encoder.pth'}")
    assert (out / "model_final.pth").is_file()
    log = (out / "log.txt").read_text()
    assert "\x1b[" not in log and "Contents of args.config_file" in log  # the config, without terminal colours
    assert log.count("Rank of current process") == 1  # one file handler


@pytest.mark.slow
def test_demo_draws_a_detectors_predictions(tmp_path, monkeypatch):
    import detectron2.utils.visualizer as visualizer
    from PIL import Image

    from det.demo import main

    labels, make_labels = [], visualizer._create_text_labels

    def recorded(*args):  # what the Visualizer writes beside each box
        made = make_labels(*args)
        labels.extend(made)
        return made

    monkeypatch.setattr(visualizer, "_create_text_labels", recorded)

    torch.manual_seed(0)
    model = instantiate(load("vitdet_semaim_tiny_coco").model)
    save_atomic({"model": model.state_dict()}, tmp_path / "model_final.pth")
    images = sorted((REPO / "data/tiny_coco/val2017").glob("*.jpg"))[:2]
    n = main(["--config", "vitdet_semaim_tiny_coco.py", "--checkpoint", str(tmp_path / "model_final.pth"),
              "--input", *map(str, images), "--output", str(tmp_path / "vis"), "--confidence", "0", "--device", "cpu",
              "--opts", "+model.roi_heads.box_predictor.test_topk_per_image=5"])  # 5 drawn, not 100: seconds
    assert n == 2
    for image in images:
        drawn = Image.open(tmp_path / "vis" / f"{image.stem}.png").convert("RGB")
        original = Image.open(image).convert("RGB")
        assert drawn.size == original.size
        assert np.abs(np.asarray(drawn, dtype=np.int16) - np.asarray(original, dtype=np.int16)).mean() > 1  # drawn on
    classes = {c["name"] for c in json.loads((REPO / "data/tiny_coco/annotations/instances_val2017.json").read_text())[
        "categories"]}
    assert labels and all(label.rsplit(" ", 1)[0] in classes for label in labels), labels[:5]  # "person 7%", not "0 7%"
    with pytest.raises(KeyError, match="unknown config key 'model.roi_heads.box_predictor.test_topk'"):
        main(["--config", "vitdet_semaim_tiny_coco.py", "--checkpoint", str(tmp_path / "model_final.pth"),
              "--input", str(images[0]), "--output", str(tmp_path / "vis"), "--opts",
              "model.roi_heads.box_predictor.test_topk=5"])


@pytest.mark.slow
def test_two_processes_on_the_cpu(tiny_encoder, tmp_path):
    """--num-gpus 2 without GPUs: detectron2's launcher on gloo, DDP without device ids."""
    import subprocess
    import sys

    path, _ = tiny_encoder
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "det/train_net.py", "--num-gpus", "2", "--dist-url", "auto",
                           "--config", "vitdet_semaim_tiny_coco.py", f"train.output_dir={out}",
                           f"train.init_checkpoint={path}", "train.max_iter=2", "train.eval_period=2",
                           "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
                           "dataloader.test.dataset.names=tiny_coco_fit"],
                          capture_output=True, text=True, timeout=600,
                          env=dict(__import__("os").environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model_final.pth").is_file() and json.loads((out / "det_metrics.json").read_text())["iteration"] == 2
    assert "Rank of current process: 0. World size: 2" in (out / "log.txt").read_text()


def test_cascade_configs_are_vitdets_cascade_on_the_semaim_recipe():
    from detectron2.modeling.roi_heads import CascadeROIHeads

    from det.train_net import recipe

    for name, depth, decay in (("vitdet_semaim_cascade", 12, 0.7), ("vitdet_semaim_cascade_large", 24, 0.8)):
        cfg, plain = load(name), load(name.replace("_cascade", "") if depth == 12 else "vitdet_semaim_large")
        heads = cfg.model.roi_heads
        assert heads._target_ is CascadeROIHeads and len(heads.box_heads) == len(heads.box_predictors) == 3
        assert [m.thresholds for m in heads.proposal_matchers] == [[0.5], [0.6], [0.7]]
        assert [p.box2box_transform.weights for p in heads.box_predictors] == [(10, 10, 5, 5), (20, 20, 10, 10),
                                                                               (30, 30, 15, 15)]
        assert all(p.cls_agnostic_bbox_reg for p in heads.box_predictors)
        assert [h.conv_dims for h in heads.box_heads] == [[256] * 4] * 3 and heads.box_heads[0].conv_norm == "LN"
        # everything but the box heads is the Mask R-CNN recipe: backbone, layer decay, schedule, data, masks
        settings, reference = recipe(cfg), recipe(plain)
        box = ("model.roi_heads.box", "model.roi_heads.proposal_matcher", "model.roi_heads._target_", "heads.")
        assert {k: v for k, v in settings.items() if not k.startswith(box)} == {
            k: v for k, v in reference.items() if not k.startswith(box)}
        assert cfg.model.backbone.net.depth == depth and cfg.optimizer.params.lr_factor_func.lr_decay_rate == decay
        assert (cfg.train.max_iter, cfg.optimizer.lr) == (plain.train.max_iter, plain.optimizer.lr)
        assert cfg.dataloader.train.dataset.names == "coco_2017_train"
        assert cfg.train.init_checkpoint == plain.train.init_checkpoint


def test_lvis_cascade_configs_are_vitdets_on_the_semaim_recipe():
    """ViTDet's LVIS/cascade_mask_rcnn_vitdet_{b,l}_100ep.py: each of the three stages keeps the LVIS
    predictor's settings (1203 classes, sigmoid + federated loss, 300 detections from 0.02)."""
    from detectron2.modeling.roi_heads import CascadeROIHeads
    from omegaconf import OmegaConf

    from det.train_net import recipe

    for name, depth, decay in (("vitdet_semaim_lvis_cascade", 12, 0.7), ("vitdet_semaim_lvis_cascade_large", 24, 0.8)):
        cfg = load(name)
        heads = cfg.model.roi_heads
        assert heads._target_ is CascadeROIHeads and heads.num_classes == 1203 and len(heads.box_predictors) == 3
        for p in heads.box_predictors:
            assert (p.test_score_thresh, p.test_topk_per_image, p.use_sigmoid_ce, p.use_fed_loss) == (0.02, 300, True,
                                                                                                      True)
            weights = OmegaConf.to_container(p.get_fed_loss_cls_weights, resolve=False)  # not a copy of the value:
            assert weights["dataset_names"] == "${dataloader.train.dataset.names}"  # it follows the data's override
            assert p.cls_agnostic_bbox_reg and p.num_classes == 1203  # the heads' own, through "${...num_classes}"
        assert cfg.model.backbone.net.depth == depth and cfg.optimizer.params.lr_factor_func.lr_decay_rate == decay
        assert (cfg.train.max_iter, cfg.optimizer.lr, cfg.dataloader.train.dataset.names) == (156_250, 2e-4,
                                                                                              "lvis_v1_train")
    box = ("model.roi_heads.box", "model.roi_heads.proposal_matcher", "model.roi_heads._target_")
    settings, reference = recipe(load("vitdet_semaim_lvis_cascade")), recipe(load("vitdet_semaim_lvis"))
    assert {k: v for k, v in settings.items() if not k.startswith(box)} == {
        k: v for k, v in reference.items() if not k.startswith(box)}  # the rest is the LVIS Mask R-CNN recipe
    large = load("vitdet_semaim_lvis_cascade_large").model.backbone.net
    assert (large.embed_dim, large.num_heads, large.drop_path_rate) == (1024, 16, 0.4)
    assert large.window_block_indexes == [i for i in range(24) if i not in (5, 11, 17, 23)]


@pytest.mark.slow
def test_cascade_trains_an_iteration_and_is_scored(tiny_encoder, tmp_path):
    """The Cascade heads (det.recipe.to_cascade) on the tiny model, one iteration on tiny_coco, with the
    SemAIM backbone loaded and the COCO evaluation written."""
    from det.recipe import to_cascade

    cfg = LazyConfig.load(f"{CONFIGS}/vitdet_semaim_tiny_coco.py")
    to_cascade(cfg.model.roi_heads, conv_dims=[64], fc_dim=128)
    LazyConfig.save(cfg, str(tmp_path / "cascade_tiny.yaml"))
    run_main("--config", str(tmp_path / "cascade_tiny.yaml"), f"train.init_checkpoint={tiny_encoder[0]}",
             f"train.output_dir={tmp_path / 'run'}", "train.max_iter=1", "train.eval_period=1",
             "train.checkpointer.period=1", "dataloader.test.dataset.names=tiny_coco_fit",
             "dataloader.train.num_workers=0", "dataloader.test.num_workers=0")
    metrics = json.loads((tmp_path / "run" / "det_metrics.json").read_text())
    assert metrics["iteration"] == 1 and metrics["dataset"] == "tiny_coco_fit" and {"bbox", "segm"} <= set(metrics)


def test_lvis_config_is_vitdets_lvis_recipe_and_names_the_missing_folder():
    from detectron2.data.samplers import RepeatFactorTrainingSampler
    from detectron2.evaluation.lvis_evaluation import LVISEvaluator

    from det.data import check_datasets

    cfg = load("vitdet_semaim_lvis")
    assert (cfg.dataloader.train.dataset.names, cfg.dataloader.test.dataset.names) == ("lvis_v1_train", "lvis_v1_val")
    assert cfg.dataloader.train.sampler._target_ is RepeatFactorTrainingSampler
    assert cfg.dataloader.train.sampler.repeat_factors.repeat_thresh == 0.001
    assert cfg.dataloader.evaluator._target_ is LVISEvaluator and cfg.dataloader.evaluator.max_dets_per_image == 300
    assert (cfg.train.max_iter, cfg.optimizer.lr, cfg.lr_multiplier.warmup_iters) == (156_250, 2e-4, 250)
    model = instantiate(cfg.model)  # the federated loss's weights come from LVIS's class counts: no data needed
    predictor = model.roi_heads.box_predictor
    assert model.roi_heads.num_classes == 1203 and predictor.use_fed_loss and predictor.use_sigmoid_ce
    assert predictor.fed_loss_cls_weights.shape == (1203,) and predictor.test_topk_per_image == 300
    assert model.backbone.net.blocks[0].attn.qkv.weight.shape == (2304, 768)  # the ViT-B SemAIM backbone
    with pytest.raises(FileNotFoundError, match=r"lvis_v1_train.json.*does not exist\. LVIS v1 must be laid out as "
                                                r".*lvis/lvis_v1_\{train,val\}\.json, with the COCO 2017 images"):
        check_datasets("lvis_v1_train")
