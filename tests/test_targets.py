"""Prediction targets: blurred normalized pixels, and frozen DINO / CLIP teachers from local files."""
import pytest
import timm
import torch

from semaim_core import build_model
from semaim_core.targets import PixelTarget, TeacherWeightsError, gaussian_kernel, patchify, unpatchify


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


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    torch.manual_seed(0)
    teacher = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64)
    path = tmp_path_factory.mktemp("teacher") / "dino_tiny.pth"
    sd = {f"backbone.{k}": v for k, v in teacher.state_dict().items()}
    sd["head.mlp.0.weight"] = torch.zeros(8, 192)  # DINO's projection head: not part of the teacher's features
    torch.save({"teacher": sd}, path)  # DINO's layout
    return path, teacher


@pytest.mark.parametrize("kind", ["dino", "clip"])
def test_feature_target_uses_the_local_teacher(teacher_file, kind):
    path, teacher = teacher_file
    model = build_model("semaim_vit_tiny_patch16", img_size=64, depth=2, target=kind, similarity_source="teacher",
                        teacher=dict(weights=str(path), arch="vit_tiny_patch16_224", img_size=64))
    assert model.decoder_pred.fc2.out_features == 192
    images = torch.randn(2, 3, 64, 64)
    out = model(images)
    assert torch.isfinite(out.loss) and 0 <= out.loss <= 4  # 2 - 2 cos
    if kind == "dino":  # same normalization as the inputs: exactly the teacher's patch tokens
        torch.testing.assert_close(model.target(images), teacher.eval().forward_features(images)[:, 1:])
    assert not any(p.requires_grad for p in model.target.parameters())
    model.train()
    assert not model.target.teacher.training
    out.loss.backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_missing_teacher_weights_are_a_clear_error(tmp_path):
    with pytest.raises(TeacherWeightsError, match="--teacher-weights"):
        build_model("semaim_vit_tiny_patch16", img_size=64, target="dino")
    with pytest.raises(TeacherWeightsError, match="does not exist"):
        build_model("semaim_vit_tiny_patch16", img_size=64, target="clip", teacher=dict(weights=str(tmp_path / "x.pth")))


def test_teacher_weights_that_do_not_fit_are_refused(teacher_file, tmp_path):
    path, teacher = teacher_file
    sd = {k: v for k, v in teacher.state_dict().items() if not k.startswith("blocks.3.")}
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(RuntimeError, match=r"model weights got no value: \['blocks.3."):
        build_model("semaim_vit_tiny_patch16", img_size=64, target="dino",
                    teacher=dict(weights=str(tmp_path / "partial.pth"), arch="vit_tiny_patch16_224", img_size=64))


def test_teacher_similarity_needs_a_feature_target():
    with pytest.raises(ValueError, match="needs a feature target"):
        build_model("semaim_vit_tiny_patch16", img_size=64, similarity_source="teacher")
