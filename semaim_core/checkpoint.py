"""The kinds of checkpoint the suite reads and their key layouts: an encoder found in any of them
(checked complete and as deep and wide as it declares), and its names in timm's, detectron2's and
mmseg's layouts. Files are read by ``files.load_file`` (no code runs); weights are put into modules
by ``weights.load_verified``.

Kinds read (``detect_kind``):
  semaim-train    this suite's training checkpoint (``format`` = "semaim-train")
  semaim-encoder  this suite's exported encoder (``format`` = "semaim-encoder")
  semaim-authors  the authors' SemAIM release: ``state_dict`` with a ``module.`` prefix, a string under ``model``
  saim            SAIM: split q / k / v projections (fused into ``qkv`` here)
  mae             MAE releases and timm ViTs: ``{"model": sd}`` or a bare state dict with fused ``qkv``
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .files import CheckpointError, load_file
from .model import MODEL_SIZES

FORMAT_TRAIN, FORMAT_ENCODER = "semaim-train", "semaim-encoder"
KINDS = ("semaim-train", "semaim-encoder", "semaim-authors", "saim", "mae")
ENCODER_PREFIXES = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm.")
BLOCK_KEYS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


def _state_dict(ckpt: dict) -> dict:
    for key in ("model", "state_dict", "module"):
        if isinstance(ckpt.get(key), dict):
            return ckpt[key]
    return ckpt


def _strip(sd: dict, prefix: str = "module.") -> dict:
    return {k.removeprefix(prefix): v for k, v in sd.items()}


def detect_kind(ckpt: dict) -> str:
    fmt = ckpt.get("format")
    if fmt in (FORMAT_TRAIN, FORMAT_ENCODER):
        return fmt
    if isinstance(ckpt.get("state_dict"), dict) and isinstance(ckpt.get("model"), str):
        return "semaim-authors"
    keys = set(_strip(_state_dict(ckpt)))
    if any(re.fullmatch(r"blocks\.\d+\.attn\.q\.weight", k) for k in keys):
        return "saim"
    if "blocks.0.attn.qkv.weight" in keys and "patch_embed.proj.weight" in keys:
        return "mae"
    hint = ""
    if any(k.startswith("backbone.net.") for k in keys):
        hint = " It looks like a detectron2 model; pass the pretrained encoder it was initialized from instead."
    elif any(k.startswith(("layers.0.ln1", "backbone.layers.")) for k in keys):
        hint = " It looks like an mmseg model; pass the pretrained encoder it was initialized from instead."
    raise CheckpointError(f"unrecognized checkpoint: expected one of {', '.join(KINDS)} "
                          f"(first keys: {sorted(keys)[:5]}).{hint}")


def _fuse_qkv(sd: dict) -> dict:
    """SAIM / BEiT style split projections -> timm's fused qkv (missing k bias = zeros)."""
    out = {}
    for k, v in sd.items():
        m = re.fullmatch(r"(blocks\.\d+\.attn)\.(q|k|v)\.(weight|bias)|(blocks\.\d+\.attn)\.(q|v)_bias", k)
        if not m:
            out[k] = v
    for i in sorted({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.attn\.q\.weight", k))}):
        p = f"blocks.{i}.attn"
        out[f"{p}.qkv.weight"] = torch.cat([sd[f"{p}.{x}.weight"] for x in "qkv"])
        biases = [sd.get(f"{p}.{x}.bias", sd.get(f"{p}.{x}_bias")) for x in "qkv"]
        if any(b is not None for b in biases):
            zero = torch.zeros_like(next(b for b in biases if b is not None))
            out[f"{p}.qkv.bias"] = torch.cat([zero if b is None else b for b in biases])
    return out


def encoder_depth(sd: dict) -> int:
    return 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)


def required_encoder_keys(depth: int) -> list[str]:
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"]
    for i in range(depth):
        keys += [f"blocks.{i}.{name}.{wb}" for name in BLOCK_KEYS for wb in ("weight", "bias")]
    return keys


def heads_for_width(width: int) -> int | None:
    """Attention heads of the standard ViT of this width (ViT-H: 16 heads of 80, not 64 channels)."""
    return {size["embed_dim"]: size["num_heads"] for size in MODEL_SIZES.values()}.get(width)


def declared_architecture(ckpt: dict, kind: str) -> dict:
    """What a checkpoint says it is (depth, width, heads): the suite's metadata, or the model name
    a release records (the authors' ``model`` = "aim_base", MAE's / SAIM's ``args.model`` =
    "mae_vit_base_patch16", timm's ``arch`` = "vit_base_patch16_224"); {} when it says nothing."""
    if kind == FORMAT_ENCODER:
        meta = ckpt.get("meta") or {}
    elif kind == FORMAT_TRAIN:
        meta = (ckpt.get("config") or {}).get("model_config") or {}
    else:
        args = ckpt.get("args")
        name = ckpt.get("model") if kind == "semaim-authors" else (
            getattr(args, "model", None) or (args.get("model") if isinstance(args, dict) else None) or ckpt.get("arch"))
        m = re.search(r"(?:vit|aim)_(tiny|small|base|large|huge)(?:_|$)", str(name or ""))
        meta = MODEL_SIZES[m.group(1)] if m else {}
    return {k: meta[k] for k in ("depth", "embed_dim", "num_heads") if meta.get(k) is not None}


def encoder_from_checkpoint(ckpt: dict, num_heads: int | None = None) -> tuple[dict, dict]:
    """(encoder state dict with timm/MAE names, metadata) from any readable kind; fails with the
    list of missing weights when the encoder is incomplete. The head count, which no weight
    shape reveals, comes from ``num_heads``, the checkpoint's metadata or the standard ViT sizes."""
    kind = detect_kind(ckpt)
    sd = _strip(_state_dict(ckpt))
    if kind == "saim":
        sd = _fuse_qkv(sd)
    sd = {k: v for k, v in sd.items() if k.startswith(ENCODER_PREFIXES)}
    depth = encoder_depth(sd)
    if depth == 0:
        raise CheckpointError(f"the {kind} checkpoint has no encoder blocks")
    missing = [k for k in required_encoder_keys(depth) if k not in sd]
    if missing:
        raise CheckpointError(f"the {kind} checkpoint lacks {len(missing)} encoder weights: {missing[:8]}")
    meta = dict(ckpt.get("meta") or {})
    cfg = (ckpt.get("config") or {}).get("model_config", {}) if kind == FORMAT_TRAIN else {}
    dim = sd["cls_token"].shape[-1]
    declared = declared_architecture(ckpt, kind)
    found = dict(depth=depth, embed_dim=dim)
    wrong = [f"{k} {declared[k]} declared, {found[k]} found"
             for k in found if k in declared and declared[k] != found[k]]
    if wrong:  # e.g. a truncated file that lost its last blocks: never a silently shallower model
        raise CheckpointError(f"the {kind} checkpoint does not hold the encoder it declares ({'; '.join(wrong)})")
    if num_heads and declared.get("num_heads") not in (None, num_heads):
        raise CheckpointError(f"--num-heads {num_heads} contradicts the checkpoint's {declared['num_heads']} heads")
    patch = sd["patch_embed.proj.weight"].shape[-1]
    n = sd["pos_embed"].shape[1] - 1
    meta.setdefault("embed_dim", dim)
    meta.setdefault("depth", depth)
    heads = num_heads or meta.get("num_heads") or cfg.get("num_heads") or heads_for_width(dim)
    if not heads:
        raise CheckpointError(f"the {kind} checkpoint has width {dim}, not a standard ViT width, and no head count: "
                              "pass --num-heads")
    if dim % heads:
        raise CheckpointError(f"{heads} heads do not divide the width {dim}")
    meta["num_heads"] = heads
    meta.setdefault("patch_size", patch)
    meta.setdefault("img_size", int(round(n ** 0.5)) * patch)
    meta.setdefault("mlp_ratio", sd["blocks.0.mlp.fc1.weight"].shape[0] / dim)
    meta["source_kind"] = meta.get("source_kind", kind)
    return sd, meta


def timm_model_args(meta: dict) -> tuple[str, dict]:
    """timm architecture name and the keyword arguments that make its ViT match ``meta``."""
    sizes = {cfg["embed_dim"]: size for size, cfg in MODEL_SIZES.items()}
    arch = f"vit_{sizes.get(meta['embed_dim'], 'base')}_patch16_224"
    kwargs = dict(img_size=meta["img_size"], patch_size=meta["patch_size"], embed_dim=meta["embed_dim"],
                  depth=meta["depth"], num_heads=meta["num_heads"], mlp_ratio=meta["mlp_ratio"])
    return arch, kwargs


def to_encoder(sd: dict, meta: dict) -> dict:
    arch, kwargs = timm_model_args(meta)
    return {"format": FORMAT_ENCODER, "model": sd, "meta": {**meta, "timm_arch": arch, "timm_kwargs": kwargs}}


def detectron2_keys(sd: dict) -> dict:
    """timm encoder names -> detectron2's ``ViT`` (``model.backbone.net``): the same names, and its
    ``pos_embed`` keeps the [CLS] slot, which the ViT drops and resizes itself; [CLS] and the final
    norm have no place there."""
    return {k: v for k, v in sd.items() if not k.startswith(("cls_token", "norm."))}


MMSEG_RENAMES = (
    (r"^blocks\.", "layers."), (r"\.norm1\.", ".ln1."), (r"\.norm2\.", ".ln2."),
    (r"\.mlp\.fc1\.", ".ffn.layers.0.0."), (r"\.mlp\.fc2\.", ".ffn.layers.1."),
    (r"^patch_embed\.proj\.", "patch_embed.projection."), (r"^norm\.", "ln1."),
)


def mmseg_keys(sd: dict) -> dict:
    """timm encoder names -> mmseg's MAE/BEiT backbone names (``layers.i.ln1``, ``ffn``, ...)."""
    out = {}
    for k, v in sd.items():
        for pattern, repl in MMSEG_RENAMES:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


def read_encoder(path: str | Path, num_heads: int | None = None, trust_pickle: bool = False) -> tuple[dict, dict]:
    """Encoder weights and metadata from any checkpoint kind the suite reads; an error names the file.
    ``trust_pickle``: only for the converter's explicit flag (``files.load_file``)."""
    ckpt = load_file(path, trust_pickle=trust_pickle)
    try:
        return encoder_from_checkpoint(ckpt, num_heads)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
