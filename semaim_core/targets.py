"""What SemAIM predicts for each patch: blurred, per-patch-normalized pixels (default), or the patch
tokens of a frozen DINO / CLIP teacher loaded from a local weights file."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from .errors import UserError
from .safe_io import CheckpointError, load_file, refuse_address
from .weights import load_verified

# Teacher architectures (timm names) and the normalization their weights were trained with. The
# CLIP target is the authors': OpenAI CLIP ViT-B/16 (QuickGELU), ln_post(x) @ proj on every token.
TEACHERS = {
    "dino": dict(arch="vit_base_patch16_224", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD),
    "clip": dict(arch="vit_base_patch16_clip_quickgelu_224", mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD),
}
# "imagenet": the teacher sees the ImageNet-normalized crop, as the authors feed it (default).
# "native": the crop is re-normalized to the statistics the teacher was trained with.
TEACHER_INPUTS = ("imagenet", "native")


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """B x C x H x W -> B x N x (p * p * C), patches in raster order, MAE's channel-last layout."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, p: int, grid: tuple[int, int]) -> torch.Tensor:
    b, _, d = patches.shape
    c = d // (p * p)
    x = patches.reshape(b, grid[0], grid[1], p, p, c)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(b, c, grid[0] * p, grid[1] * p)


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k1 = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    k1 = k1 / k1.sum()
    return torch.outer(k1, k1).float()


class PixelTarget(nn.Module):
    """Gaussian blur (depthwise, zero padding) of the normalized image, or none with ``blur=False``,
    patchified, each patch normalized to zero mean and unit variance."""

    def __init__(self, patch_size: int, in_chans: int = 3, kernel_size: int = 9, sigma: float = 1.0, eps: float = 1e-6,
                 blur: bool = True):
        super().__init__()
        self.patch_size, self.eps, self.blur = patch_size, eps, blur
        self.dim = patch_size * patch_size * in_chans
        k = gaussian_kernel(kernel_size, sigma)
        self.register_buffer("kernel", k.expand(in_chans, 1, -1, -1).clone(), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, enabled=False):  # targets in full precision
            x = images.to(self.kernel.dtype)
            if self.blur:
                x = F.conv2d(x, self.kernel, padding=self.kernel.shape[-1] // 2, groups=x.shape[1])
            t = patchify(x, self.patch_size)
            mean, var = t.mean(dim=-1, keepdim=True), t.var(dim=-1, keepdim=True)
            return (t - mean) / (var + self.eps).sqrt()

    @staticmethod
    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).pow(2).mean(dim=-1)


class TeacherWeightsError(UserError, FileNotFoundError):
    pass


def read_teacher_state_dict(path: Path) -> dict:
    """The weights in a teacher file: a state dict (possibly wrapped, as DINO and MAE save them), with
    OpenAI CLIP keys under ``visual.``. Read without running code (``safe_io.load_file``): OpenAI's
    TorchScript ``ViT-B-16.pt`` is extracted to safetensors once with the converter's --state-dict."""
    try:
        sd = load_file(path)
    except CheckpointError as e:
        raise TeacherWeightsError(f"cannot read teacher weights: {e}") from None
    for key in ("teacher", "model", "state_dict"):  # DINO, MAE-style and Lightning-style wrappers
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise TeacherWeightsError(f"teacher weights {path} hold a {type(sd).__name__}, not a state dict")
    sd = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in sd.items()}
    if "class_embedding" in sd:  # OpenAI's visual tower saved on its own
        sd = {f"visual.{k}": v for k, v in sd.items()}
    return sd


def load_teacher(kind: str, weights: str | Path | None, arch: str | None = None, **timm_kwargs) -> nn.Module:
    """A frozen timm ViT with the user's local weights; every teacher weight must load.

    Accepted files: timm/DINO layouts (``blocks.*``, ``patch_embed.*``) and, for CLIP, OpenAI's
    layout (``visual.*`` or the visual tower's bare keys, a state dict or OpenAI's TorchScript
    archive). The CLIP projection ``proj`` becomes the timm head, applied to every token."""
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    if kind not in TEACHERS:
        raise ValueError(f"unknown feature target '{kind}': choose 'pixel', {', '.join(repr(k) for k in TEACHERS)}")
    arch = arch or TEACHERS[kind]["arch"]
    if not weights:
        raise TeacherWeightsError(
            f"target '{kind}' needs the teacher's weights as a local file: pass --teacher-weights PATH "
            f"(a {arch} state dict; nothing is downloaded)")
    refuse_address(weights, "--teacher-weights")
    weights = Path(weights)
    if not weights.is_file():
        raise TeacherWeightsError(f"teacher weights file {weights} does not exist: download it once and pass its path")
    sd = read_teacher_state_dict(weights)
    proj = sd.get("visual.proj", sd.get("head.weight"))
    if kind == "clip" and proj is None:
        raise TeacherWeightsError(
            f"{weights} has no CLIP projection (visual.proj or head.weight): the CLIP target is ln_post(x) @ proj; "
            "pass OpenAI's ViT-B/16 weights (OpenAI layout) or timm's vit_base_patch16_clip_quickgelu_224")
    # CLIP: the head is the projection (OpenAI's proj is D x out, timm's head.weight out x D)
    out_dim = (proj.shape[1] if "visual.proj" in sd else proj.shape[0]) if kind == "clip" else 0
    model = timm.create_model(arch, pretrained=False, num_classes=out_dim, **timm_kwargs)
    sd = checkpoint_filter_fn(sd, model)  # timm's converter reads OpenAI CLIP and other layouts
    if kind == "dino":  # DINO / projection heads have no place in a feature extractor
        sd = {k: v for k, v in sd.items() if not k.startswith("head")}
    try:
        load_verified(model, sd, f"teacher {arch} <- {weights}")
    except CheckpointError as e:
        clip = kind == "clip"
        openai = (" or OpenAI CLIP layout (visual.conv1, visual.transformer.resblocks.i, visual.ln_post, visual.proj)"
                  if clip else "")
        raise TeacherWeightsError(
            f"{e}\nExpected a {arch} teacher: timm key layout (patch_embed.proj, blocks.i.attn.qkv, norm"
            f"{', head = CLIP proj' if clip else ''}){openai}.") from e
    return model.eval().requires_grad_(False)


class FeatureTarget(nn.Module):
    """Tokens of a frozen teacher: DINO's final-norm tokens, or CLIP's ln_post(x) @ proj; the loss
    is 2 - 2 cos per patch."""

    def __init__(self, kind: str, weights: str | Path | None = None, arch: str | None = None,
                 input_norm: str = "imagenet", **timm_kwargs):
        super().__init__()
        if input_norm not in TEACHER_INPUTS:
            raise ValueError(f"unknown teacher input normalization '{input_norm}': choose one of {TEACHER_INPUTS}")
        self.teacher = load_teacher(kind, weights, arch, **timm_kwargs)
        self.dim = self.teacher.num_classes or self.teacher.embed_dim
        self.patch_size = self.teacher.patch_embed.patch_size[0]
        self.prefix = self.teacher.num_prefix_tokens
        mean, std = TEACHERS[kind]["mean"], TEACHERS[kind]["std"]
        if input_norm == "imagenet":
            mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        # inputs arrive ImageNet-normalized; map them to the normalization the teacher is fed
        scale = torch.tensor(IMAGENET_DEFAULT_STD) / torch.tensor(std)
        shift = (torch.tensor(IMAGENET_DEFAULT_MEAN) - torch.tensor(mean)) / torch.tensor(std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher is frozen: never in training mode
        return self

    @torch.no_grad()
    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[CLS] + patch tokens, B x (1 + N) x dim (CLIP: projected)."""
        out = self.teacher.forward_features(images * self.scale + self.shift)
        out = torch.cat([out[:, :1], out[:, self.prefix:]], dim=1)
        return self.teacher.head(out)  # identity for DINO (num_classes=0), proj for CLIP

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokens(images)[:, 1:]

    @staticmethod
    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 2 - 2 * F.cosine_similarity(pred, target, dim=-1)
