"""Checkpoint kinds, conversions and the verified load that det/, seg/ and cls/ rely on."""
import pytest
import torch

from cls.backbone import timm_vit_from_encoder
from semaim_core import build_model
from semaim_core.layouts import (
    detect_kind,
    detectron2_keys,
    encoder_from_checkpoint,
    mmseg_keys,
    read_encoder,
    to_encoder,
)
from semaim_core.safe_io import CheckpointError, save_atomic
from semaim_core.weights import load_verified
from tools.convert_checkpoint import WRITERS

DEPTH, DIM, HEADS, SIZE = 2, 192, 3, 32  # ViT-Tiny width: bare checkpoints get their heads from the size table


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("semaim_vit_tiny_patch16", img_size=SIZE, depth=DEPTH, embed_dim=DIM, num_heads=HEADS)


@pytest.fixture(scope="module")
def encoder(model):
    return model.encoder_state_dict()


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_training_checkpoint_gives_the_encoder(model, encoder):
    ckpt = {"format": "semaim-train", "model": model.state_dict(), "config": {"model_config": model.config}}
    sd, meta = encoder_from_checkpoint(ckpt)
    assert_same(sd, encoder)
    assert (meta["depth"], meta["embed_dim"], meta["num_heads"], meta["img_size"]) == (DEPTH, DIM, HEADS, SIZE)


def test_authors_checkpoint(model, encoder):
    ckpt = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "model": "aim_custom",
            "epoch": 399}
    assert detect_kind(ckpt) == "semaim-authors"
    assert_same(encoder_from_checkpoint(ckpt, depth=DEPTH)[0], encoder)  # a custom name declares no depth


def test_saim_split_qkv_is_fused(encoder):
    sd = {}
    for k, v in encoder.items():
        if k.endswith("attn.qkv.weight"):
            for name, part in zip("qkv", v.chunk(3)):
                sd[k.replace("qkv", name)] = part
        elif k.endswith("attn.qkv.bias"):
            q, _, v_ = v.chunk(3)
            sd[k.replace("qkv.bias", "q_bias")], sd[k.replace("qkv.bias", "v_bias")] = q, v_
        else:
            sd[k] = v
    ckpt = {"model": {f"module.{k}": v for k, v in sd.items()}}
    assert detect_kind(ckpt) == "saim"
    fused, _ = encoder_from_checkpoint(ckpt, depth=DEPTH)
    expected = dict(encoder)
    for i in range(DEPTH):  # SAIM/BEiT have no k bias: it becomes zeros
        expected[f"blocks.{i}.attn.qkv.bias"] = expected[f"blocks.{i}.attn.qkv.bias"].clone()
        expected[f"blocks.{i}.attn.qkv.bias"][DIM:2 * DIM] = 0
    assert_same(fused, expected)


def test_mae_release_and_export_round_trip(encoder, tmp_path):
    save_atomic({"model": encoder}, tmp_path / "mae.pth")
    sd, meta = read_encoder(tmp_path / "mae.pth", depth=DEPTH)
    assert meta["source_kind"] == "mae"
    save_atomic(to_encoder(sd, meta), tmp_path / "enc.pth")
    again, meta2 = read_encoder(tmp_path / "enc.pth")
    assert_same(again, encoder)
    assert meta2["timm_kwargs"]["depth"] == DEPTH
    vit = timm_vit_from_encoder(tmp_path / "enc.pth", num_classes=3)
    assert_same({k: v for k, v in vit.state_dict().items() if not k.startswith("head")}, encoder)


def test_detectron2_layout_loads_every_backbone_weight(encoder):
    from detectron2.modeling import ViT

    net = ViT(img_size=64, patch_size=16, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, window_size=2,
              window_block_indexes=[0], use_rel_pos=True, pretrain_img_size=SIZE)
    sd = detectron2_keys(encoder)
    load_verified(net, sd, "detectron2 ViT", allowed_missing=(r"rel_pos_[hw]$",))
    for k, v in sd.items():
        assert torch.equal(net.state_dict()[k], v), k
    assert len(sd) == len(encoder) - 3  # all but [CLS] and the final norm


def test_mmseg_layout_loads_every_backbone_weight(encoder):
    from mmseg.models.backbones import MAE

    import seg  # noqa: F401

    net = MAE(img_size=(SIZE, SIZE), patch_size=16, embed_dims=DIM, num_layers=DEPTH, num_heads=HEADS,
              init_values=1.0, final_norm=True)
    sd = mmseg_keys(encoder)
    load_verified(net, sd, "mmseg MAE", allowed_missing=(r"gamma_[12]$", r"relative_position"))
    assert len(sd) == len(encoder)
    assert torch.equal(net.layers[1].ffn.layers[1].weight, encoder["blocks.1.mlp.fc2.weight"])
    assert torch.equal(net.ln1.weight, encoder["norm.weight"])


def test_verified_load_fails_on_missing_and_misplaced_weights(encoder):
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=SIZE, embed_dim=DIM, depth=DEPTH,
                            num_heads=HEADS)
    incomplete = {k: v for k, v in encoder.items() if k != "blocks.1.mlp.fc1.weight"}
    with pytest.raises(CheckpointError, match=r"1 model weights got no value: \['blocks.1.mlp.fc1.weight'\]"):
        load_verified(vit, incomplete, "timm", allowed_missing=(r"^head\.",))
    prefixed = {f"module.{k}": v for k, v in encoder.items()}  # the classic silent strict=False failure
    with pytest.raises(CheckpointError, match="found no place"):
        load_verified(vit, prefixed, "timm", allowed_missing=(r"^head\.",))
    wrong = dict(encoder, cls_token=torch.zeros(1, 1, DIM + 1))
    with pytest.raises(CheckpointError, match="shape of cls_token"):
        load_verified(vit, wrong, "timm", allowed_missing=(r"^head\.",))


BAD_FILES = {
    "nope.pth": (None, "does not exist"),
    "torn.pth": (b"PK\x03\x04 torn", "cannot read checkpoint"),
    "d2.pth": (lambda enc: WRITERS["detectron2"](enc), "looks like a detectron2 model"),
    "other.pth": (lambda enc: {"model": {"fc.weight": torch.zeros(2)}}, "unrecognized checkpoint"),
    "partial.pth": (lambda enc: {"model": {k: v for k, v in enc.items() if not k.startswith("blocks.1.attn")}},
                    "lacks 4 encoder weights"),
    "list.pth": (lambda enc: [1, 2], "not a dict"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_wrong_kinds_and_bad_files_are_named(name, encoder, tmp_path):
    content, message = BAD_FILES[name]
    if isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    elif content is not None:
        torch.save(content(encoder), tmp_path / name)
    with pytest.raises(CheckpointError, match=message):
        read_encoder(tmp_path / name)


def test_head_count_comes_from_the_width_table_or_must_be_given():
    def bare(dim):
        m = build_model("semaim_vit_tiny_patch16", img_size=SIZE, depth=1, embed_dim=dim, num_heads=4)
        return {"model": m.encoder_state_dict()}

    assert encoder_from_checkpoint(bare(1280), depth=1)[1]["num_heads"] == 16  # ViT-H: 16 heads of 80, not 1280 / 64
    assert encoder_from_checkpoint(bare(1024), depth=1)[1]["num_heads"] == 16
    with pytest.raises(CheckpointError, match="not a standard ViT width.*--num-heads"):
        encoder_from_checkpoint(bare(96))
    assert encoder_from_checkpoint(bare(96), num_heads=4)[1]["num_heads"] == 4
    with pytest.raises(CheckpointError, match="5 heads do not divide the width 96"):
        encoder_from_checkpoint(bare(96), num_heads=5)
    # a standard width fixes the heads too: --num-heads may only confirm them
    with pytest.raises(CheckpointError, match="has the standard width-1024 ViT's 16 heads, which --num-heads 8"):
        encoder_from_checkpoint(bare(1024), num_heads=8, depth=1)


def test_convert_tool(encoder, tmp_path, capsys):
    import runpy
    import sys

    save_atomic({"model": encoder}, tmp_path / "mae.pth")
    for fmt in ("encoder", "timm", "detectron2", "mmseg"):
        sys.argv = ["convert", str(tmp_path / "mae.pth"), str(tmp_path / f"{fmt}.pth"), "--to", fmt, "--depth", "2"]
        runpy.run_path("tools/convert_checkpoint.py", run_name="__main__")
        assert (tmp_path / f"{fmt}.pth").is_file()
    assert "mae" in capsys.readouterr().out
    assert_same(read_encoder(tmp_path / "timm.pth", depth=DEPTH)[0], encoder)


@pytest.mark.parametrize("kind", ["encoder", "train", "authors"])
def test_a_checkpoint_missing_its_last_block_is_refused(model, encoder, kind):
    truncated = {k: v for k, v in encoder.items() if not k.startswith(f"blocks.{DEPTH - 1}.")}
    if kind == "encoder":
        ckpt = to_encoder(*encoder_from_checkpoint({"model": encoder}, depth=DEPTH))
        ckpt["model"] = truncated
    elif kind == "train":
        ckpt = {"format": "semaim-train", "model": truncated, "config": {"model_config": model.config}}
    else:  # the authors' ViT-Tiny-width model name declares 12 blocks
        ckpt = {"state_dict": {f"module.{k}": v for k, v in truncated.items()}, "model": "aim_tiny"}
    expected = DEPTH if kind != "authors" else 12
    with pytest.raises(CheckpointError, match=f"depth {expected} declared, {DEPTH - 1} found"):
        encoder_from_checkpoint(ckpt)


def test_safetensors_export_keeps_metadata_and_loads_everywhere(encoder, tmp_path):
    import runpy
    import sys

    from safetensors import safe_open

    save_atomic({"model": encoder}, tmp_path / "mae.pth")
    sys.argv = ["convert", str(tmp_path / "mae.pth"), str(tmp_path / "enc.safetensors"), "--depth", "2"]
    runpy.run_path("tools/convert_checkpoint.py", run_name="__main__")
    with safe_open(str(tmp_path / "enc.safetensors"), framework="pt") as f:
        assert f.metadata()["format"] == "semaim-encoder" and '"depth": 2' in f.metadata()["meta"]
    sd, meta = read_encoder(tmp_path / "enc.safetensors")
    assert_same(sd, encoder)
    assert (meta["depth"], meta["embed_dim"], meta["num_heads"], meta["source_kind"]) == (DEPTH, DIM, HEADS, "mae")
    model = timm_vit_from_encoder(tmp_path / "enc.safetensors", num_classes=5)  # the verified timm load
    assert torch.equal(model.blocks[1].mlp.fc2.weight, encoder["blocks.1.mlp.fc2.weight"])
    card = (tmp_path / "enc.md").read_text()
    assert "width 192, depth 2, 3 heads" in card and "train.init_checkpoint=enc.safetensors" in card
    (tmp_path / "torn.safetensors").write_bytes(b"\x08\x00\x00")
    with pytest.raises(CheckpointError, match="cannot read safetensors file"):
        read_encoder(tmp_path / "torn.safetensors")


def test_a_release_missing_its_last_block_is_refused(tmp_path):
    """MAE's save_model records args.model: a ViT-Tiny release must hold 12 blocks, and a file that
    lost its last one (or one in the middle) is refused, not exported as a shallower encoder."""
    import argparse

    torch.manual_seed(0)
    full = build_model("semaim_vit_tiny_patch16", img_size=SIZE).encoder_state_dict()
    args = argparse.Namespace(model="mae_vit_tiny_patch16", epochs=800)
    save_atomic({"model": full, "args": args}, tmp_path / "full.pth")
    assert read_encoder(tmp_path / "full.pth")[1]["depth"] == 12
    save_atomic({"model": {k: v for k, v in full.items() if not k.startswith("blocks.11.")}, "args": args},
                tmp_path / "short.pth")
    with pytest.raises(CheckpointError, match=r"short.pth: the mae checkpoint does not hold the encoder it declares "
                                              r"\(depth 12 declared, 11 found\)"):
        read_encoder(tmp_path / "short.pth")
    save_atomic({"model": {k: v for k, v in full.items() if not k.startswith("blocks.5.")}}, tmp_path / "gap.pth")
    with pytest.raises(CheckpointError, match=r"has a gap in its block indices \(blocks \[5\] absent of 12\)"):
        read_encoder(tmp_path / "gap.pth")
    timm_layout = {"arch": "vit_tiny_patch16_224", "state_dict": {k: v for k, v in full.items()
                                                                  if not k.startswith("blocks.11.")}}
    save_atomic(timm_layout, tmp_path / "timm.pth")
    with pytest.raises(CheckpointError, match="depth 12 declared, 11 found"):
        read_encoder(tmp_path / "timm.pth")



def edited_meta(**changes):
    """An exported encoder (ViT-Tiny width, 2 blocks, 32 px) with its metadata edited."""
    def build(enc):
        record = to_encoder(*encoder_from_checkpoint({"model": enc}, depth=DEPTH))
        record["meta"].update(changes)
        return record
    return build


CONTRADICTIONS = {
    "a bare standard-width file that lost blocks": (lambda enc: {"model": enc}, [],
                                                    "has width 192, the standard ViT's of depth 12, but holds 2 "
                                                    "blocks and declares no depth.*--depth 2"),
    "--depth that the file contradicts": (edited_meta(), ["--depth", "3"], "declares depth 2, which --depth 3"),
    "heads that contradict their own timm copy": (edited_meta(num_heads=6), [],
                                                  "contradicts itself: num_heads 6, but 3 in timm_kwargs"),
    "an img_size the position table does not hold": (edited_meta(img_size=224), [],
                                                      r"declares img_size 224, but its position table holds 4 "
                                                      r"patches \(32 px at patch 16\)"),
    "an absurd img_size": (edited_meta(img_size=10 ** 6), [], "declares img_size 1000000, but its position table"),
    "--num-heads 6 on a width-192 file": (lambda enc: {"model": enc}, ["--depth", "2", "--num-heads", "6"],
                                          "has the standard width-192 ViT's 3 heads, which --num-heads 6 contradicts"),
    "a NaN weight": (lambda enc: {"model": dict(enc, cls_token=torch.full_like(enc["cls_token"], float("nan")))},
                     ["--depth", "2"], r"NaN or infinite weights in 1 tensors \(\['cls_token'\]\)"),
}


@pytest.mark.parametrize("case", CONTRADICTIONS)
def test_the_converter_refuses_what_contradicts_the_tensors(case, encoder, tmp_path):
    from tools.convert_checkpoint import main

    build, flags, message = CONTRADICTIONS[case]
    save_atomic(build(encoder), tmp_path / "in.pth")
    with pytest.raises(SystemExit, match=message):
        main([str(tmp_path / "in.pth"), str(tmp_path / "out.pth"), *flags])
    assert not (tmp_path / "out.pth").exists()


@pytest.mark.parametrize("heads", ["0", "-3"])
def test_a_head_count_below_one_is_refused_by_the_parser(heads, tmp_path, capsys):
    from tools.convert_checkpoint import main

    with pytest.raises(SystemExit):
        main([str(tmp_path / "in.pth"), str(tmp_path / "out.pth"), f"--num-heads={heads}"])
    assert f"argument --num-heads: {heads} is not a whole number above 0" in capsys.readouterr().err


def test_the_converter_names_the_kind_of_file_it_read(encoder, tmp_path, capsys):
    from tools.convert_checkpoint import main

    save_atomic({"format": "semaim-train", "model": encoder,
                 "config": {"model_config": dict(embed_dim=DIM, depth=DEPTH, num_heads=HEADS)}}, tmp_path / "ckpt.pth")
    main([str(tmp_path / "ckpt.pth"), str(tmp_path / "enc.pth")])
    main([str(tmp_path / "enc.pth"), str(tmp_path / "again.pth")])
    out = capsys.readouterr().out.splitlines()
    assert "ckpt.pth (semaim-train):" in out[0]
    assert "enc.pth (semaim-encoder, exported from a semaim-train checkpoint):" in out[1], out


@pytest.mark.parametrize("old, new", [(14, 64), (14, 32), (16, 14), (6, 6)])
def test_the_position_table_is_resized_as_vitdet_and_mmseg_resize_it(old, new):
    """timm's resampler as the suite calls it gives ViTDet's and mmseg's own resized tables, bit for bit."""
    from detectron2.modeling.backbone.utils import get_abs_pos
    from mmseg.models.backbones.vit import VisionTransformer

    from semaim_core.weights import resize_pos_embed

    pos = torch.randn(1, 1 + old * old, 32)
    ours = resize_pos_embed(pos, new * new)
    vitdet = get_abs_pos(pos, has_cls_token=True, hw=(new, new)).reshape(1, new * new, 32)
    assert torch.equal(ours[:, 1:], vitdet) and torch.equal(ours[:, :1], pos[:, :1])
    assert torch.equal(ours, VisionTransformer.resize_pos_embed(pos, (new, new), (old, old), "bicubic"))
