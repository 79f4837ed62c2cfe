"""Prediction targets: blurred normalized pixels, and frozen DINO / CLIP teachers from local files."""
from pathlib import Path

import pytest
import timm
import torch

from semaim_core import build_model
from semaim_core.targets import (
    PixelTarget,
    TeacherWeightsError,
    gaussian_kernel,
    load_teacher,
    patchify,
    unpatchify,
)
from tools import convert_checkpoint


def test_patchify_round_trip_and_layout():
    x = torch.randn(2, 3, 32, 48)
    p = patchify(x, 16)
    assert p.shape == (2, 6, 16 * 16 * 3)
    torch.testing.assert_close(unpatchify(p, 16, (2, 3)), x)
    torch.testing.assert_close(p[0, 1].view(16, 16, 3).permute(2, 0, 1), x[0, :, :16, 16:32])  # raster order


def test_pixel_target_blurs_then_normalizes_each_patch():
    k = gaussian_kernel(9, 1.0)
    assert k.shape == (9, 9) and torch.isclose(k.sum(), torch.tensor(1.0)) and k[4, 4] == k.max()
    target = PixelTarget(16)
    images = torch.randn(2, 3, 32, 32)
    t = target(images)
    assert t.shape == (2, 4, 768)
    torch.testing.assert_close(t.mean(-1), torch.zeros(2, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.var(-1), torch.ones(2, 4), atol=1e-3, rtol=0)
    # the blur really smooths: neighbouring pixels of the target correlate, those of the noise do not
    blurred = torch.nn.functional.conv2d(images, target.kernel, padding=4, groups=3)
    assert blurred.std() < 0.5 * images.std()
    const = torch.ones(1, 3, 32, 32)  # zero padding darkens the border, as in the released code
    edge = torch.nn.functional.conv2d(const, target.kernel, padding=4, groups=3)
    assert edge[0, 0, 16, 16] == pytest.approx(1.0, abs=1e-6) and edge[0, 0, 0, 0] < 0.5
    # --no-pixel-blur (the paper's ablation): the normalized patches of the image itself
    plain = PixelTarget(16, blur=False)(images)
    patches = patchify(images, 16)
    expected = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(plain, expected)
    assert not torch.allclose(plain, t, atol=0.1)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    torch.manual_seed(0)
    teacher = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64)
    path = tmp_path_factory.mktemp("teacher") / "dino_tiny.pth"
    sd = {f"backbone.{k}": v for k, v in teacher.state_dict().items()}
    sd["head.mlp.0.weight"] = torch.zeros(8, 192)  # DINO's projection head: not part of the teacher's features
    torch.save({"teacher": sd}, path)  # DINO's layout
    return path, teacher


def test_dino_target_uses_the_local_teacher(teacher_file):
    path, teacher = teacher_file
    model = build_model("semaim_vit_tiny_patch16", img_size=64, depth=2, target="dino",
                        teacher=dict(weights=str(path), arch="vit_tiny_patch16_224", img_size=64))
    assert model.similarity_source == "teacher"  # the authors' default with a teacher target
    assert model.decoder_pred.fc2.out_features == 192
    images = torch.randn(2, 3, 64, 64)
    out = model(images)
    assert torch.isfinite(out.loss) and 0 <= out.loss <= 4  # 2 - 2 cos
    tokens = teacher.eval().forward_features(images)
    torch.testing.assert_close(model.target(images), tokens[:, 1:])  # exactly the teacher's patch tokens
    # the order's similarity map comes from the teacher's tokens
    cosine = torch.nn.functional.cosine_similarity(tokens[:, :1], tokens[:, 1:], -1)
    torch.testing.assert_close(out.similarity, cosine.softmax(-1))
    assert not any(p.requires_grad for p in model.target.parameters())
    model.train()
    assert not model.target.teacher.training
    out.loss.backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_missing_teacher_weights_are_a_clear_error(tmp_path):
    with pytest.raises(TeacherWeightsError, match="--teacher-weights"):
        build_model("semaim_vit_tiny_patch16", img_size=64, target="dino")
    with pytest.raises(TeacherWeightsError, match="does not exist"):
        build_model("semaim_vit_tiny_patch16", img_size=64, target="clip",
                    teacher=dict(weights=str(tmp_path / "x.pth")))


def test_teacher_weights_that_do_not_fit_are_refused(teacher_file, tmp_path):
    path, teacher = teacher_file
    sd = {k: v for k, v in teacher.state_dict().items() if not k.startswith("blocks.3.")}
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(TeacherWeightsError, match=r"(?s)model weights got no value: \['blocks.3.*timm key layout"):
        build_model("semaim_vit_tiny_patch16", img_size=64, target="dino",
                    teacher=dict(weights=str(tmp_path / "partial.pth"), arch="vit_tiny_patch16_224", img_size=64))


def test_teacher_similarity_needs_a_feature_target():
    with pytest.raises(ValueError, match="needs a feature target"):
        build_model("semaim_vit_tiny_patch16", img_size=64, similarity_source="teacher")


def openai_clip_visual(width=64, layers=2, heads=2, patch=16, grid=2, out_dim=24, seed=0):
    """A random state dict in OpenAI CLIP's key layout (visual tower under ``visual.``)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: 0.1 * torch.randn(*shape, generator=g)  # noqa: E731
    sd = {"conv1.weight": r(width, 3, patch, patch), "class_embedding": r(width),
          "positional_embedding": r(grid * grid + 1, width), "proj": r(width, out_dim)}
    for ln in ("ln_pre", "ln_post"):
        sd[f"{ln}.weight"], sd[f"{ln}.bias"] = 1 + r(width), r(width)
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        sd |= {p + "attn.in_proj_weight": r(3 * width, width), p + "attn.in_proj_bias": r(3 * width),
               p + "attn.out_proj.weight": r(width, width), p + "attn.out_proj.bias": r(width),
               p + "ln_1.weight": 1 + r(width), p + "ln_1.bias": r(width),
               p + "ln_2.weight": 1 + r(width), p + "ln_2.bias": r(width),
               p + "mlp.c_fc.weight": r(4 * width, width), p + "mlp.c_fc.bias": r(4 * width),
               p + "mlp.c_proj.weight": r(width, 4 * width), p + "mlp.c_proj.bias": r(width)}
    return {f"visual.{k}": v for k, v in sd.items()}


def openai_clip_tokens(sd, images, heads=2):
    """OpenAI's visual forward, written from its definition: QuickGELU blocks, then ln_post(x) @ proj
    on every token (the authors' SemAIM target)."""
    F = torch.nn.functional
    v = {k.removeprefix("visual."): t for k, t in sd.items()}
    width = v["class_embedding"].shape[0]
    ln = lambda x, n: F.layer_norm(x, (width,), v[f"{n}.weight"], v[f"{n}.bias"])  # noqa: E731
    x = F.conv2d(images, v["conv1.weight"], stride=v["conv1.weight"].shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([v["class_embedding"].expand(x.shape[0], 1, -1), x], 1) + v["positional_embedding"]
    x = ln(x, "ln_pre")
    i = 0
    while f"transformer.resblocks.{i}.ln_1.weight" in v:
        p = f"transformer.resblocks.{i}."
        attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        attn.load_state_dict({k.removeprefix(p + "attn."): t for k, t in v.items() if k.startswith(p + "attn.")})
        h = ln(x, p + "ln_1")
        x = x + attn(h, h, h, need_weights=False)[0]
        h = F.linear(ln(x, p + "ln_2"), v[p + "mlp.c_fc.weight"], v[p + "mlp.c_fc.bias"])
        x = x + F.linear(h * torch.sigmoid(1.702 * h), v[p + "mlp.c_proj.weight"], v[p + "mlp.c_proj.bias"])
        i += 1
    return ln(x, "ln_post") @ v["proj"]


@pytest.mark.parametrize("layout", ["openai", "openai-visual-only"])
def test_clip_target_is_openai_ln_post_proj_on_every_token(tmp_path, layout):
    sd = openai_clip_visual()
    saved = sd if layout == "openai" else {k.removeprefix("visual."): v for k, v in sd.items()}
    torch.save(saved, tmp_path / "clip.pth")
    model = build_model("semaim_vit_tiny_patch16", img_size=32, depth=2, target="clip",
                        teacher=dict(weights=str(tmp_path / "clip.pth"), img_size=32, embed_dim=64, depth=2,
                                     num_heads=2))
    assert model.decoder_pred.fc2.out_features == 24  # the projection's width (512 for ViT-B/16)
    images = torch.randn(2, 3, 32, 32)
    expected = openai_clip_tokens(sd, images)  # fed the ImageNet-normalized crop as is, as the authors do
    torch.testing.assert_close(model.target.tokens(images), expected, rtol=1e-4, atol=1e-5)
    out = model(images)
    assert torch.isfinite(out.loss) and model.similarity_source == "teacher"


def test_clip_teacher_input_can_be_renormalized(tmp_path):
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    sd = openai_clip_visual()
    torch.save(sd, tmp_path / "clip.pth")
    model = build_model("semaim_vit_tiny_patch16", img_size=32, depth=2, target="clip",
                        teacher=dict(weights=str(tmp_path / "clip.pth"), input_norm="native", img_size=32,
                                     embed_dim=64, depth=2, num_heads=2))
    raw = torch.rand(1, 3, 32, 32)
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    imagenet = (raw - mean) / std
    clip = (raw - torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    torch.testing.assert_close(model.target.tokens(imagenet), openai_clip_tokens(sd, clip), rtol=1e-4, atol=1e-5)


def test_clip_weights_without_projection_are_refused(tmp_path, teacher_file):
    path, _ = teacher_file
    with pytest.raises(TeacherWeightsError, match="no CLIP projection"):
        build_model("semaim_vit_tiny_patch16", img_size=64, target="clip", teacher=dict(weights=str(path)))


class Holder(torch.nn.Module):
    def forward(self) -> int:
        return 0


def torchscript_archive(sd: dict, path: Path):
    """A TorchScript archive whose state dict is ``sd`` (as OpenAI's ViT-B-16.pt holds the CLIP model)."""
    root = Holder()
    for key, value in sd.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, Holder())
            module = getattr(module, name)
        module.register_parameter(leaf, torch.nn.Parameter(value))
    torch.jit.script(root).save(str(path))


def test_torchscript_teacher_is_refused_until_extracted(tmp_path):
    sd = openai_clip_visual()
    archive = tmp_path / "ViT-B-16.pt"
    torchscript_archive(sd, archive)
    kw = dict(img_size=32, embed_dim=64, depth=2, num_heads=2)
    with pytest.raises(TeacherWeightsError, match="TorchScript archive.*--state-dict --trust-pickle"):
        load_teacher("clip", archive, **kw)
    out = tmp_path / "clip.safetensors"
    with pytest.raises(SystemExit, match="TorchScript"):
        convert_checkpoint.main([str(archive), str(out), "--state-dict"])
    convert_checkpoint.main([str(archive), str(out), "--state-dict", "--trust-pickle"])
    torch.save(sd, tmp_path / "clip.pth")  # the same weights as a plain state dict
    images = torch.randn(2, 3, 32, 32)
    extracted, plain = load_teacher("clip", out, **kw), load_teacher("clip", tmp_path / "clip.pth", **kw)
    torch.testing.assert_close(extracted(images), plain(images), rtol=0, atol=0)
