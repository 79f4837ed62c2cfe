"""seg/: the UperNet configs, layer decay on the SemAIM backbone, verified loading, train + test."""
import json
import re

import pytest
import torch
from conftest import step_rows
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

import seg  # noqa: F401
from semaim_core import build_model
from semaim_core.export import export_encoder
from semaim_core.layouts import mmseg_keys
from semaim_core.safe_io import CheckpointError, load_file, save_atomic
from tools.convert_checkpoint import WRITERS

MAIN = "seg/configs/upernet_semaim.py"
TINY = "seg/configs/upernet_semaim-vit-tiny_1xb4-100iters_tiny-coco-stuff-256x256.py"
register_all_modules()


@pytest.fixture
def tiny_encoder(demo_encoder):
    return demo_encoder


# BEiT/MAE's ADE20K UperNet recipe, as docs/segmentation.md gives it with its sources
MAIN_RECIPE = {"model.backbone.type": "SemAIMViT", "model.backbone.drop_path_rate": 0.1,
               "optim_wrapper.optimizer.lr": 4e-4, "optim_wrapper.optimizer.weight_decay": 0.05,
               "optim_wrapper.type": "AmpOptimWrapper", "train_cfg.max_iters": 160000,
               "param_scheduler.0.end": 1500, "model.test_cfg.mode": "slide",
               "train_dataloader.batch_size": 2, "train_dataloader.dataset.type": "ADE20KDataset"}


@pytest.mark.parametrize("key, value", MAIN_RECIPE.items(), ids=list(MAIN_RECIPE))
def test_the_ade20k_config_holds_the_published_recipe(key, value):
    node = Config.fromfile(MAIN)
    for part in key.split("."):
        node = node[int(part)] if part.isdigit() else node[part]
    assert node == value  # x 8 GPUs: batch 16


@pytest.fixture(scope="module")
def main_groups():
    """The ViT-B ADE20K model and, per parameter, the lr scale and weight decay its optimizer gives it."""
    cfg = Config.fromfile(MAIN)
    cfg.model.backbone.checkpoint = None
    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, dict(cfg.optim_wrapper, type="OptimWrapper"))
    scale, decay = {}, {}
    for g in wrapper.optimizer.param_groups:
        for p in g["params"]:
            scale[id(p)], decay[id(p)] = g["lr_scale"], g["weight_decay"]
    return model, scale, decay


def test_layer_decay_scales_each_block_by_its_depth_and_the_rest_by_one(main_groups):
    model, scale, _ = main_groups
    depth = 12
    assert len(scale) == sum(p.requires_grad for p in model.parameters())  # nothing left out
    for name, p in model.named_parameters():
        m = re.match(r"backbone\.layers\.(\d+)\.", name)
        if m:
            assert scale[id(p)] == pytest.approx(0.65 ** (depth - int(m.group(1)))), name
        elif name.startswith(("backbone.patch_embed", "backbone.pos_embed", "backbone.cls_token")):
            assert scale[id(p)] == pytest.approx(0.65 ** (depth + 1)), name
        else:
            assert not name.startswith("backbone."), f"{name} got no layer id"
            assert scale[id(p)] == 1.0, name


def test_position_table_and_class_token_get_no_weight_decay(main_groups):
    model, _, decay = main_groups
    named = dict(model.named_parameters())
    assert decay[id(named["backbone.pos_embed"])] == 0.0 and decay[id(named["backbone.cls_token"])] == 0.0
    assert decay[id(named["backbone.layers.0.attn.qkv.weight"])] == 0.05


def test_constructor_refuses_a_depth_that_disagrees():
    cfg = Config.fromfile(TINY)
    cfg.model.backbone.checkpoint = None
    model = MODELS.build(cfg.model)
    with pytest.raises(ValueError, match="num_layers=12 but the backbone has 4 blocks"):
        build_optim_wrapper(model, dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-4),
                                        constructor="SemAIMLayerDecayOptimizerConstructor",
                                        paramwise_cfg=dict(decay_rate=0.65, num_layers=12)))


def test_every_backbone_weight_arrives(tiny_encoder):
    path, sd = tiny_encoder
    cfg = Config.fromfile(TINY)
    cfg.model.backbone.checkpoint = str(path)
    model = MODELS.build(cfg.model)
    model.init_weights()
    bb = model.backbone
    own = bb.state_dict()
    renamed = {k: v for k, v in mmseg_keys(sd).items() if not k.startswith("ln1.")}  # no final norm
    assert len(renamed) == len(sd) - 2
    for k, v in renamed.items():
        if k == "pos_embed":
            assert own[k].shape == (1, 257, 192)  # resized from the 96 px pretraining grid to 256 px
            assert torch.equal(own[k][:, 0], v[:, 0])
        else:
            assert torch.equal(own[k], v), k
    assert all(float(v.abs().sum()) == 0 for k, v in own.items() if k.endswith("relative_position_bias_table"))


def run_tool(name, *argv):
    import importlib

    return importlib.import_module(f"seg.tools.{name}").main(list(argv))


def data_options(derived):
    root = derived / "coco_stuff"
    return [f"{split}_dataloader.dataset.data_root={root}" for split in ("train", "val", "test")] + [
        f"{split}_dataloader.num_workers=0" for split in ("train", "val", "test")] + [
        f"{split}_dataloader.persistent_workers=False" for split in ("train", "val", "test")]


@pytest.mark.slow
def test_tiny_config_trains_tests_and_writes_miou(tiny_encoder, derived, tmp_path):
    path, _ = tiny_encoder
    work = tmp_path / "work"
    opts = data_options(derived) + ["val_dataloader.dataset.indices=8", "test_dataloader.dataset.indices=8"]
    run_tool("train", TINY, "--work-dir", str(work), "--cfg-options", f"model.backbone.checkpoint={path}",
             "train_cfg.max_iters=2", "train_cfg.val_interval=2", "default_hooks.checkpoint.interval=2",
             "default_hooks.logger.interval=1", *opts)
    metrics = json.loads((work / "seg_metrics.json").read_text())
    assert metrics["task"] == "seg" and {"aAcc", "mIoU", "mAcc"} <= set(metrics)
    assert len(metrics["per_class"]) == 80 and "person" in metrics["per_class"]
    assert 0 <= metrics["mIoU"] <= 100
    (work / "seg_metrics.json").unlink()
    scalars = list(work.glob("*/vis_data/scalars.json"))[0].read_text().splitlines()
    assert "loss" in json.loads(scalars[0]) and "mIoU" in json.loads(scalars[-1])
    assert list(work.glob("*/vis_data/events.out.tfevents.*"))
    assert not list(work.glob(".*tmp*"))

    result = run_tool("test", TINY, str(work / "iter_2.pth"), "--work-dir", str(work), "--cfg-options", *opts)
    assert set(result) >= {"aAcc", "mIoU", "mAcc"}
    assert json.loads((work / "seg_metrics.json").read_text())["mIoU"] == pytest.approx(result["mIoU"], abs=0.01)


@pytest.mark.parametrize("typo,message", [
    ("default_hooks.checkpoint.max_keep_ckpt=2", "CheckpointHook has no setting 'max_keep_ckpt'; did you mean "
                                                 "'default_hooks.checkpoint.max_keep_ckpts'"),
    ("default_hooks.checkpoint.save_bst=mIoU", "CheckpointHook has no setting 'save_bst'; did you mean "
                                               "'default_hooks.checkpoint.save_best'"),
])
def test_a_typo_in_a_hook_setting_is_named_before_training(typo, message, tmp_path):
    """mmengine's CheckpointHook hands settings it does not know to save_checkpoint, which fails at the
    first checkpoint, after training: the suite names them before the run directory is claimed."""
    with pytest.raises(KeyError, match=re.escape(message)):
        run_tool("train", TINY, "--work-dir", str(tmp_path / "w"), "--cfg-options", typo)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("typo, hint", [
    ("trian_cfg.max_iters=3", "the config has no 'trian_cfg'; did you mean 'train_cfg'"),
    ("train_cfg.max_iter=3", "train_cfg has no 'max_iter'; did you mean 'train_cfg.max_iters'"),
    ("model.bakbone.checkpoint=x", "model has no 'bakbone'; did you mean 'model.backbone'")])
def test_a_mistyped_override_is_named_before_the_work_dir_is_made(typo, hint, tmp_path):
    with pytest.raises(KeyError, match=re.escape(hint)):
        run_tool("train", TINY, "--work-dir", str(tmp_path / "typo"), "--cfg-options", typo)
    assert not (tmp_path / "typo").exists()


def detectron2_file(tmp_path, sd):
    return save_atomic(WRITERS["detectron2"](sd), tmp_path / "d2.pth")


def smaller_encoder(tmp_path, sd):
    return save_atomic(export_encoder(build_model("semaim_vit_small_patch16", img_size=96, depth=4)),
                       tmp_path / "s.pth")


@pytest.mark.parametrize("make, message", [
    (lambda tmp_path, sd: tmp_path / "missing.pth", "does not exist"),
    (detectron2_file, "looks like a detectron2 model"),
    (smaller_encoder, "shape of")], ids=["missing", "a detectron2 model", "another width"])
def test_a_backbone_checkpoint_that_cannot_initialize_it_is_refused(make, message, tiny_encoder, tmp_path):
    cfg = Config.fromfile(TINY)
    cfg.model.backbone.checkpoint = str(make(tmp_path, tiny_encoder[1]))
    model = MODELS.build(cfg.model)
    with pytest.raises(CheckpointError, match=message):
        model.init_weights()


@pytest.mark.slow
def test_the_test_tool_refuses_an_encoder_for_a_segmentor(tiny_encoder, derived, tmp_path):
    with pytest.raises(CheckpointError, match="not a trained segmentor"):
        run_tool("test", TINY, str(tiny_encoder[0]), "--work-dir", str(tmp_path / "w"), "--cfg-options",
                 *data_options(derived))


def test_a_start_without_its_inputs_names_them_all_and_leaves_nothing(tmp_path):
    from semaim_core.errors import InputErrors

    with pytest.raises(InputErrors) as err:
        run_tool("train", TINY, "--work-dir", str(tmp_path / "w"), "--cfg-options",
                 f"model.backbone.checkpoint={tmp_path / 'encoder.pth'}",
                 *[f"{split}_dataloader.dataset.data_root={tmp_path / 'stuff'}" for split in ("train", "val", "test")])
    lines = str(err.value).splitlines()
    assert lines[0] == "3 inputs cannot be used:"  # train, val (= test) and the encoder, each once
    assert "images/train2017 does not exist" in lines[1] and "images/val2017 does not exist" in lines[2]
    assert lines[3] == f"  - model.backbone.checkpoint {tmp_path / 'encoder.pth'} does not exist"
    assert not (tmp_path / "w").exists()


def test_a_missing_dataset_names_the_layout_it_needs(tmp_path):
    from semaim_core.errors import UserError

    with pytest.raises(UserError, match=r"ADEChallengeData2016/\{images,annotations\}"):
        run_tool("train", MAIN, "--work-dir", str(tmp_path / "w2"), "--cfg-options",
                 "train_dataloader.dataset.data_root=/nonexistent/ade")


def train_rows(work):
    """(iteration, loss) of every training row in all of a work dir's vis_data/scalars.json (one per start)."""
    return [(r["step"], r["loss"]) for f in sorted(work.glob("*/vis_data/scalars.json"))
            for r in map(json.loads, f.read_text().splitlines()) if "loss" in r]


@pytest.mark.slow(seconds=70)
def test_resume_is_exact_logs_once_and_refuses_another_recipe(tiny_encoder, derived, tmp_path):
    """Killed after logging iteration 3 but before its checkpoint was written, then resumed from
    iteration 2: the weights at iteration 4 equal those of an uninterrupted run bit for bit (drop
    path draws from the RNG at every step), and every iteration is logged once."""
    import shutil

    from semaim_core.rundir import RunDirError

    path = tmp_path / "encoder.pth"
    shutil.copy(tiny_encoder[0], path)
    opts = [f"model.backbone.checkpoint={path}", "default_hooks.checkpoint.interval=1",
            "default_hooks.logger.interval=1", "train_dataloader.batch_size=2",
            "train_cfg.val_interval=100", "val_dataloader.dataset.indices=2", *data_options(derived)]
    straight, work = tmp_path / "straight", tmp_path / "work"
    run_tool("train", TINY, "--work-dir", str(straight), "--cfg-options", "train_cfg.max_iters=4", *opts)
    run_tool("train", TINY, "--work-dir", str(work), "--cfg-options", "train_cfg.max_iters=3", *opts)
    before = load_file(work / "iter_2.pth")  # the safe loader reads what mmengine wrote
    assert all(torch.equal(v, load_file(straight / "iter_2.pth")["state_dict"][k])  # two runs, the same weights
               for k, v in before["state_dict"].items())
    (work / "iter_3.pth").unlink()  # "killed" before iteration 3's checkpoint
    (work / "last_checkpoint").write_text(str(work / "iter_2.pth"))
    with pytest.raises(RunDirError, match=r"(?s)another recipe.*optim_wrapper.optimizer.lr: 0.0002 -> 0.001"):
        run_tool("train", TINY, "--work-dir", str(work), "--resume", "--cfg-options", "train_cfg.max_iters=4",
                 "optim_wrapper.optimizer.lr=1e-3", *opts)
    with pytest.raises(RunDirError, match="already holds a run.*--overwrite"):
        run_tool("train", TINY, "--work-dir", str(work), "--cfg-options", "train_cfg.max_iters=4", *opts)
    copy = tmp_path / "copy"
    shutil.copytree(work, copy)
    run_tool("train", TINY, "--work-dir", str(work), "--resume", "--cfg-options", "train_cfg.max_iters=4", *opts)
    after, expected = load_file(work / "iter_4.pth"), load_file(straight / "iter_4.pth")
    assert after["meta"]["iter"] == 4 and not (work / "iter_5.pth").exists()
    assert all(torch.equal(v, expected["state_dict"][k]) for k, v in after["state_dict"].items())
    losses = after["message_hub"]["log_scalars"]["train/loss"]  # stored as plain numbers
    assert len(losses["log_history"]) == 4  # iterations 1-2 restored, then 3-4: resumed, not restarted
    assert train_rows(work) == train_rows(straight) and [i for i, _ in train_rows(work)] == [1, 2, 3, 4]
    rows = step_rows(work)  # the suite's schema beside mmengine's, each iteration once
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and [r["loss"] for r in rows] == [r["loss"] for r in
                                                                                      step_rows(straight)]
    assert "decode.loss_ce" in rows[0]["losses"] and rows[0]["time"] > 0

    # a copied work dir does not resume from the original's checkpoint (last_checkpoint is absolute)
    with pytest.raises(RunDirError, match=f"names {work / 'iter_2.pth'}, outside this work dir {copy}"):
        run_tool("train", TINY, "--work-dir", str(copy), "--resume", "--cfg-options", "train_cfg.max_iters=4", *opts)
    (copy / "last_checkpoint").write_text("iter_2.pth")  # a name is taken inside the work dir
    (copy / "seg_metrics.json").unlink()  # the original's result, which the copy's would replace
    run_tool("train", TINY, "--work-dir", str(copy), "--resume", "--cfg-options", "train_cfg.max_iters=3", *opts)
    assert load_file(copy / "iter_3.pth")["meta"]["iter"] == 3

    # the encoder is part of the recipe by content: another file over the same path is refused
    other = load_file(path)
    save_atomic(dict(other, model={k: v + 0.01 for k, v in other["model"].items()}), path)
    with pytest.raises(RunDirError, match=r"model.backbone.checkpoint.sha256: '[0-9a-f]{64}' -> '[0-9a-f]{64}'"):
        run_tool("train", TINY, "--work-dir", str(work), "--resume", "--cfg-options", "train_cfg.max_iters=5", *opts)
    shutil.copy(tiny_encoder[0], path)

    # a checkpoint that does not fit the model is not loaded "as far as it fits"
    ckpt = load_file(work / "iter_4.pth")
    del ckpt["state_dict"]["decode_head.conv_seg.weight"]
    torch.save(ckpt, work / "iter_4.pth")
    with pytest.raises(RuntimeError, match="decode_head.conv_seg.weight"):
        run_tool("train", TINY, "--work-dir", str(work), "--resume", "--cfg-options", "train_cfg.max_iters=5", *opts)


@pytest.mark.slow
def test_metrics_record_their_provenance_and_are_not_overwritten(tiny_encoder, derived, tmp_path):
    from semaim_core.rundir import RunDirError

    path, _ = tiny_encoder
    work = tmp_path / "work"
    opts = data_options(derived) + ["val_dataloader.dataset.indices=2", "test_dataloader.dataset.indices=2"]
    run_tool("train", TINY, "--work-dir", str(work), "--cfg-options", f"model.backbone.checkpoint={path}",
             "train_cfg.max_iters=1", "train_cfg.val_interval=1", "default_hooks.checkpoint.interval=1", *opts)
    record = json.loads((work / "seg_metrics.json").read_text())["provenance"]
    assert record["iteration"] == 1 and record["run"] == str(work.resolve()) and record["images"] == 2
    assert record["checkpoint"] is None and "COCOStuffDataset" in record["dataset"] and record["suite_commit"]
    before = set(work.iterdir())
    with pytest.raises(RunDirError, match="holds the result of another evaluation.*--overwrite"):
        run_tool("test", TINY, str(work / "iter_1.pth"), "--work-dir", str(work), "--cfg-options", *opts)
    assert set(work.iterdir()) == before  # refused before a runner (and its log folder) was built
    with pytest.raises(CheckpointError, match="does not exist"):  # a missing file is named as such
        run_tool("test", TINY, str(tmp_path / "missing.pth"), "--work-dir", str(work), "--cfg-options", *opts)
    run_tool("test", TINY, str(work / "iter_1.pth"), "--work-dir", str(work), "--overwrite", "--cfg-options", *opts)
    scored = json.loads((work / "seg_metrics.json").read_text())["provenance"]["checkpoint"]
    from semaim_core.rundir import file_digest
    assert scored == dict(path=str((work / "iter_1.pth").resolve()), sha256=file_digest(work / "iter_1.pth"))


@pytest.mark.slow
def test_load_from_must_fit_the_model(derived, tmp_path):
    """``load_from`` (a whole segmentor's weights) loads only when every weight fits: mmengine would
    load what fits, warn, and train on."""
    cfg = Config.fromfile(TINY)
    cfg.model.backbone.checkpoint = None
    torch.manual_seed(0)
    sd = MODELS.build(cfg.model).state_dict()
    save_atomic({"state_dict": sd, "meta": {}}, tmp_path / "whole.pth")
    opts = [*data_options(derived), "model.backbone.checkpoint=None", "train_cfg.max_iters=1",
            "train_cfg.val_interval=5", "default_hooks.checkpoint.interval=1"]
    run_tool("train", TINY, "--work-dir", str(tmp_path / "fits"), "--cfg-options",
             f"load_from={tmp_path / 'whole.pth'}", *opts)
    assert (tmp_path / "fits" / "iter_1.pth").is_file()
    sd = dict(sd, extra_head=torch.zeros(1))
    del sd["decode_head.conv_seg.weight"]
    save_atomic({"state_dict": sd, "meta": {}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"(?s)load_from .*other.pth: the weights do not fit the model.*"
                                              r"decode_head.conv_seg.weight.*extra_head.*model.backbone.checkpoint"):
        run_tool("train", TINY, "--work-dir", str(tmp_path / "other"), "--cfg-options",
                 f"load_from={tmp_path / 'other.pth'}", *opts)
    assert not (tmp_path / "other" / "iter_1.pth").exists()


@pytest.mark.parametrize("name,depth,blocks,decay,classes", [
    ("upernet_semaim-vit-l16_8xb2-amp-160k_ade20k-512x512.py", 24, [7, 11, 15, 23], 0.95, 150),
    ("upernet_semaim-vit-b16_8xb2-amp-80k_coco-stuff164k-512x512.py", 12, [3, 5, 7, 11], 0.65, 171),
    ("upernet_semaim-vit-b16_8xb2-amp-160k_ade20k-512x512.py", 12, [3, 5, 7, 11], 0.65, 150),
])
def test_more_configs_build_and_take_a_step(name, depth, blocks, decay, classes):
    import torch
    from mmengine.optim import build_optim_wrapper
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    cfg = Config.fromfile(f"seg/configs/{name}")
    assert cfg.model.backbone.num_layers == depth and cfg.model.backbone.out_indices == blocks
    assert cfg.optim_wrapper.paramwise_cfg.decay_rate == decay and cfg.model.decode_head.num_classes == classes
    # the same structure at a tiny width and size, on the CPU (BN instead of SyncBN)
    bn, dim, size = dict(type="BN", requires_grad=True), 32, (64, 64)
    cfg.model.backbone.update(checkpoint=None, embed_dims=dim, num_heads=2, img_size=size)
    cfg.model.data_preprocessor.size = size
    cfg.model.neck.update(embed_dim=dim, norm_cfg=bn)
    cfg.model.decode_head.update(in_channels=[dim] * 4, channels=16, norm_cfg=bn)
    cfg.model.auxiliary_head.update(in_channels=dim, channels=16, norm_cfg=bn)
    cfg.model.test_cfg = dict(mode="whole")
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, dict(cfg.optim_wrapper, type="OptimWrapper"))
    scale = {id(p): g["lr_scale"] for g in wrapper.optimizer.param_groups for p in g["params"]}
    assert scale[id(model.backbone.layers[0].attn.qkv.weight)] == pytest.approx(decay ** depth)
    data = dict(inputs=[torch.randint(0, 255, (3, *size), dtype=torch.uint8) for _ in range(2)],
                data_samples=[SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, classes, (1, *size))),
                                            metainfo=dict(img_shape=size)) for _ in range(2)])
    before = model.backbone.layers[-1].ffn.layers[1].weight.clone()
    losses = model.train_step(data, wrapper)
    assert torch.isfinite(sum(v for k, v in losses.items() if "loss" in k))
    assert not torch.equal(before, model.backbone.layers[-1].ffn.layers[1].weight)


@pytest.mark.slow
def test_test_tool_tta_saves_predictions_and_pictures(tiny_encoder, derived, tmp_path, monkeypatch):
    from mmseg.models import SegTTAModel
    from PIL import Image

    merged = []
    merge = SegTTAModel.merge_preds
    def counting_merge(self, preds):
        merged.append(len(preds[0]))
        return merge(self, preds)

    monkeypatch.setattr(SegTTAModel, "merge_preds", counting_merge)

    path, _ = tiny_encoder
    work = tmp_path / "work"
    opts = data_options(derived) + ["val_dataloader.dataset.indices=1", "test_dataloader.dataset.indices=1"]
    run_tool("train", TINY, "--work-dir", str(work), "--cfg-options", f"model.backbone.checkpoint={path}",
             "train_cfg.max_iters=1", "train_cfg.val_interval=100", "default_hooks.checkpoint.interval=1", *opts)
    plain = run_tool("test", TINY, str(work / "iter_1.pth"), "--work-dir", str(tmp_path / "plain"),
                     "--cfg-options", *opts)
    out, show = tmp_path / "preds", tmp_path / "vis"
    tta = run_tool("test", TINY, str(work / "iter_1.pth"), "--work-dir", str(tmp_path / "tta"), "--tta", "--out",
                   str(out), "--show-dir", str(show), "--cfg-options", *opts)
    assert set(tta) >= {"mIoU", "aAcc"} and set(plain) >= {"mIoU", "aAcc"}
    assert merged == [4]  # one image, 2 scales x 2 flips merged
    image = sorted((derived / "coco_stuff/images/val2017").glob("*.jpg"))[0]
    pred = Image.open(next(out.glob("*.png")))
    assert pred.size == Image.open(image).size and pred.mode in ("L", "P")  # a label map at the image's size
    drawn = list(show.rglob("*.png"))
    assert drawn and Image.open(drawn[0]).mode == "RGB"  # coloured predictions over the image


def test_config_text_is_formatted_once_per_content():
    from seg.fast_config import FormattedOnceConfig

    cfg = Config.fromfile(TINY)
    fast = FormattedOnceConfig.of(cfg)
    assert fast.pretty_text == Config.pretty_text.fget(cfg)
    fast.train_cfg.max_iters = 7  # a changed setting is formatted anew
    assert fast.pretty_text == Config.pretty_text.fget(fast) and "max_iters=7" in fast.pretty_text


def test_the_tests_config_cache_reads_a_changed_file_again(tmp_path):
    from conftest import parse_file_once

    index = tmp_path / "model-index.yml"  # mmseg's model index, parsed once while it is unchanged
    index.write_text("Import: [a.yml]\n")
    assert parse_file_once(str(index)) == {"Import": ["a.yml"]}
    index.write_text("Import: [a.yml, b.yml]\n")
    assert parse_file_once(str(index)) == {"Import": ["a.yml", "b.yml"]}


IMPORT_THEN_RUNNER = """
import tempfile
import mmengine.config.utils
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import CheckpointLoader
from mmengine.runner.checkpoint import _load_checkpoint

def mmengine_state():
    return (mmengine.config.utils.load, HistoryBuffer.__reduce__, HistoryBuffer.__reduce_ex__,
            CheckpointLoader.__dict__["_get_checkpoint_loader"])

before = mmengine_state()
import seg
from mmseg.registry import MODELS, RUNNERS
assert mmengine_state() == before, "importing seg changed mmengine"
assert MODELS.get("SemAIMViT") and RUNNERS.get("SemAIMRunner")

class Model(BaseModel):
    def forward(self, *args, **kwargs):
        return {}

RUNNERS.get("SemAIMRunner")(model=Model(), work_dir=tempfile.mkdtemp(), experiment_name="import-test")
_load_checkpoint("https://example.org/x.pth")  # an init_cfg Pretrained read, after the runner is built
"""


def test_importing_seg_only_registers_and_the_runner_routes_reads_to_the_safe_reader():
    """mmengine's own behaviour is untouched by ``import seg`` (configs import it); building the
    SemAIMRunner is what sends every checkpoint read to the suite's reader."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", IMPORT_THEN_RUNNER], capture_output=True, text=True)
    assert "importing seg changed mmengine" not in out.stderr
    assert out.returncode == 1 and "CheckpointError: checkpoint https://example.org/x.pth is a https:// address" in \
        out.stderr, out.stderr[-2000:]


@pytest.mark.slow(seconds=60)
def test_two_processes_on_the_cpu_resume_exactly(tiny_encoder, derived, tmp_path):
    """``--launcher pytorch`` under torchrun without GPUs (the runner starts gloo and DDP without
    device ids, which mmengine's own path cannot): rank 0 alone writes, and a run resumed from
    iteration 2 ends at iteration 3 with the weights of an uninterrupted run, bit for bit, from
    every rank's restored RNG (alike here: mmengine seeds each rank alike unless diff_rank_seed)."""
    import os
    import subprocess
    import sys

    def torchrun(work, iters, port, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "seg.tools.train", TINY, "--launcher", "pytorch", "--work-dir", str(work), *extra,
               "--cfg-options", f"model.backbone.checkpoint={tiny_encoder[0]}", f"train_cfg.max_iters={iters}",
               "train_cfg.val_interval=100", "default_hooks.checkpoint.interval=1", "default_hooks.logger.interval=1",
               "train_dataloader.batch_size=2", "val_dataloader.dataset.indices=2", *data_options(derived)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    straight, work = tmp_path / "straight", tmp_path / "work"
    log = torchrun(straight, 3, 29561)
    assert "Distributed training: True" in log and "GPU number: 2" in log, log[-2000:]  # mmengine counts processes
    torchrun(work, 2, 29562)
    torchrun(work, 3, 29563, "--resume")
    after, expected = load_file(work / "iter_3.pth"), load_file(straight / "iter_3.pth")
    assert all(torch.equal(v, expected["state_dict"][k]) for k, v in after["state_dict"].items())
    assert [r["step"] for r in step_rows(work)] == [1, 2, 3]  # rank 0 alone logs
    assert len(after["rng_per_rank"]) == 2


def test_vis_backends_are_added_when_asked_and_a_missing_package_is_named_first(tmp_path, monkeypatch):
    """--vis-backend adds mmengine's W&B / MLflow backends beside the config's own; a package that is
    not installed is named before the work dir is claimed, not at the first log line of a long run."""
    import importlib.util

    from seg.tools.common import load_config, parser
    from semaim_core.errors import SettingError

    def backends(*argv):
        args = parser("").parse_args([TINY, "--work-dir", str(tmp_path / "w"), *argv])
        return [b["type"] for b in load_config(args).visualizer.vis_backends]

    assert backends() == ["LocalVisBackend", "TensorboardVisBackend"]  # off by default
    for name in ("wandb", "mlflow"):
        if importlib.util.find_spec(name) is None:
            with pytest.raises(SettingError, match=f"--vis-backend {name}: .*pip install {name}"):
                run_tool("train", TINY, "--work-dir", str(tmp_path / "w"), "--vis-backend", name)
    assert not (tmp_path / "w").exists()
    for name in ("wandb", "mlflow"):  # stand-ins: the suite adds the backend; mmengine drives the service
        (tmp_path / "site" / name).mkdir(parents=True)
        (tmp_path / "site" / name / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert backends("--vis-backend", "wandb", "mlflow")[2:] == ["WandbVisBackend", "MLflowVisBackend"]


# ---------------------------------------------------------------------------- frozen-feature linear protocol
LINEAR = "seg/configs/linear_semaim-vit-b16_8xb2-40k_ade20k-512x512.py"
LINEAR4 = "seg/configs/linear4_semaim-vit-b16_8xb2-40k_ade20k-512x512.py"
LINEAR_FIT = "seg/configs/linear_semaim-vit-tiny_1xb4-fit_tiny-coco-stuff-128x128.py"
# dinov3/eval/segmentation/configs/config-ade20k-linear-training.yaml, linear_head.py, and the ADE20K
# transforms (short side 512 x 0.5-2.0, crop 512, flip 0.5, photometric distortion, label 0 ignored)
DINOV3_LINEAR = {"optim_wrapper.type": "OptimWrapper", "optim_wrapper.optimizer.type": "AdamW",
                 "optim_wrapper.optimizer.lr": 1e-3, "optim_wrapper.optimizer.betas": (0.9, 0.999),
                 "optim_wrapper.optimizer.weight_decay": 1e-3, "train_cfg.max_iters": 40000,
                 "train_cfg.val_interval": 5000, "train_dataloader.batch_size": 2,
                 "model.backbone.out_indices": [11], "model.backbone.final_norm": True,
                 "model.backbone.norm_outputs": True, "model.backbone.frozen": True,
                 "model.decode_head.type": "LinearBNHead", "model.decode_head.dropout_ratio": 0.1,
                 "model.decode_head.norm_cfg.type": "SyncBN", "model.decode_head.num_classes": 150,
                 "model.decode_head.loss_decode.type": "CrossEntropyLoss", "model.test_cfg.mode": "slide",
                 "model.test_cfg.crop_size": (512, 512), "model.test_cfg.stride": (341, 341),
                 "train_dataloader.dataset.pipeline.1.reduce_zero_label": True,
                 "train_dataloader.dataset.pipeline.2.ratio_range": (0.5, 2.0),
                 "train_dataloader.dataset.pipeline.3.crop_size": (512, 512),
                 "train_dataloader.dataset.pipeline.4.prob": 0.5,
                 "train_dataloader.dataset.pipeline.5.type": "PhotoMetricDistortion"}


@pytest.mark.parametrize("key, value", DINOV3_LINEAR.items(), ids=list(DINOV3_LINEAR))
def test_the_linear_config_holds_dinov3s_recipe(key, value):
    node = Config.fromfile(LINEAR)
    for part in key.split("."):
        node = node[int(part)] if part.isdigit() else node[part]
    assert node == value
    assert "clip_grad" not in Config.fromfile(LINEAR).optim_wrapper  # DINOv3: gradient_clip inf


def test_the_linear_schedule_is_dinov3s_warmup_one_cycle():
    """DINOv3's WarmupOneCycleLR (warm-up 1500 from 1e-6, cosine to 0 over 40k, pct_start 0), by its
    formula, against the config's scheduler stepped as mmengine steps it over all 40k iterations."""
    import math

    from mmengine.optim import OptimWrapper
    from mmengine.registry import PARAM_SCHEDULERS

    cfg = Config.fromfile(LINEAR)
    peak, total, warmup, ratio = 1e-3, 40000, 1500, 1e-6

    def dinov3(step):
        if step < warmup:
            k = (1 - step / warmup) * (1 - ratio)
            return peak * (1 - k) * (1 - step / total)
        return peak * (math.cos(math.pi * (step + 1) / total) + 1) / 2

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    wrapper = OptimWrapper(optimizer)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=wrapper)) for s in cfg.param_scheduler]
    worst = 0.0
    for step in range(total):
        worst = max(worst, abs(optimizer.param_groups[0]["lr"] - dinov3(step)) / peak)
        wrapper.step()  # no gradient: changes nothing; mmengine expects it before the schedulers step
        for s in schedulers:
            s.step()
    assert worst < 1e-12, worst


def test_the_linear_head_and_the_normed_outputs_are_dinov3s():
    """LinearBNHead: the blocks' features resized and concatenated, BatchNorm, 1 x 1 conv (dropout
    before the BatchNorm in training, as DINOv3's); norm_outputs puts every output, not only the
    last block's, through the encoder's final norm. The frozen backbone takes no gradient and stays
    in eval mode when its model trains."""
    cfg = Config.fromfile(LINEAR4)
    cfg.model.backbone.update(checkpoint=None, img_size=(64, 64), num_layers=4, embed_dims=48, num_heads=3,
                              out_indices=[1, 2, 3])
    cfg.model.decode_head.update(in_channels=[48] * 3, in_index=[0, 1, 2], channels=144,
                                 norm_cfg=dict(type="BN", requires_grad=True), num_classes=5)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    backbone, head = model.backbone, model.decode_head
    assert not backbone.training and head.training and not any(p.requires_grad for p in backbone.parameters())
    images = torch.randn(2, 3, 64, 64)
    outs = backbone(images)
    assert not any(o.requires_grad for o in outs)
    plain = MODELS.build(dict(cfg.model.backbone, final_norm=False, norm_outputs=False, frozen=False))
    plain.load_state_dict({k: v for k, v in backbone.state_dict().items() if not k.startswith("ln1.")})
    plain.eval()
    with torch.no_grad():
        raw = plain(images)
        for out, r in zip(outs, raw):
            torch.testing.assert_close(out, backbone.norm1(r.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        head.eval()
        x = torch.cat(outs, dim=1)
        expected = head.conv_seg(torch.nn.functional.batch_norm(x, head.bn.running_mean, head.bn.running_var,
                                                                head.bn.weight, head.bn.bias, eps=head.bn.eps))
        torch.testing.assert_close(head(outs), expected)
    assert isinstance(head.dropout, torch.nn.Dropout2d) and head.dropout.p == 0.1
    with pytest.raises(ValueError, match="channels=100 must be the features' width 144"):
        MODELS.build(dict(cfg.model.decode_head, channels=100))


@pytest.mark.slow(seconds=40)
def test_the_linear_probe_trains_its_head_alone_and_fits(tiny_encoder, derived, tmp_path):
    """The fit check of the linear protocol: 60 iterations on 4 maps, scored on them. The head
    learns (mIoU far above an untrained head's), the encoder's weights in the checkpoint are the
    loaded ones bit for bit, and the head's BatchNorm has seen the features."""
    path, encoder = tiny_encoder
    work = tmp_path / "work"
    run_tool("train", LINEAR_FIT, "--work-dir", str(work), "--cfg-options", f"model.backbone.checkpoint={path}",
             *data_options(derived))
    result = json.loads((work / "seg_metrics.json").read_text())
    assert result["mIoU"] > 40, result["mIoU"]  # 60.2 on 2 cores, 2026-12-05; an untrained head scores ~1
    weights = load_file(work / "iter_60.pth")["state_dict"]
    loaded = mmseg_keys(encoder)
    backbone = {k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")}
    assert all(torch.equal(backbone[k], loaded[k]) for k in loaded if k in backbone and k != "pos_embed")
    assert sum(k in backbone for k in loaded) >= len(loaded) - 1  # every encoder tensor kept
    assert weights["decode_head.bn.running_var"].ne(1).any()
    from tools.lib.results import collect, columns  # the tables keep it apart from fine-tuned UperNet's mIoU

    assert (result["protocol"], result["blocks"]) == ("linear", [3])
    assert [label for _, label in columns(collect([("linear", [str(work)])]))] == [
        "mIoU (linear, blocks 3) [COCOStuff]"]
