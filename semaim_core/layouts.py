"""The kinds of checkpoint the suite reads and their key layouts: an encoder found in any of them
(checked complete and as deep and wide as it declares), and its names in timm's, detectron2's and
mmseg's layouts. Files are read by ``safe_io.load_file`` (no code runs); weights are put into modules
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

from .model import MODEL_SIZES
from .safe_io import CheckpointError, load_file

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


def required_encoder_keys(depth: int) -> list[str]:
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"]
    for i in range(depth):
        keys += [f"blocks.{i}.{name}.{wb}" for name in BLOCK_KEYS for wb in ("weight", "bias")]
    return keys


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


def standard_size(width: int) -> dict:
    """The standard ViT of this width (ViT-Ti/S/B/L/H: depth and heads), or {}."""
    return next((dict(size) for size in MODEL_SIZES.values() if size["embed_dim"] == width), {})


def _block_indices(sd: dict) -> list[int]:
    return sorted({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})


def check_architecture(sd: dict, declared: dict, meta: dict, num_heads: int | None, depth: int | None) -> tuple:
    """(depth, heads) of the encoder in ``sd``, checked against everything that speaks of it: what
    the file declares (``declared``, its metadata ``meta``) and, for what it does not declare, the
    standard ViT of its width: that ViT's depth unless ``depth`` confirms another, its head count
    always (``num_heads`` names the heads only for a width no standard ViT has). The patch size,
    image size and MLP ratio the metadata names must match the weights. Every contradiction is an
    error: a file that lost its last blocks is never read as a shallower encoder."""
    found, dim = len(_block_indices(sd)), sd["cls_token"].shape[-1]
    standard = standard_size(dim)
    expected = declared.get("depth") or depth or standard.get("depth") or found
    if depth is not None and declared.get("depth") not in (None, depth):
        raise CheckpointError(f"declares depth {declared['depth']}, which --depth {depth} contradicts")
    if expected != found:
        if "depth" in declared or depth is not None:
            where = "declared" if "depth" in declared else "given by --depth"
            raise CheckpointError(f"does not hold the encoder it declares (depth {expected} {where}, {found} found)")
        raise CheckpointError(f"has width {dim}, the standard ViT's of depth {expected}, but holds {found} blocks and "
                              "declares no depth (a file that lost its last blocks?). If it is an encoder of "
                              f"{found} blocks, convert it once with --depth {found}")
    heads = declared.get("num_heads") or standard.get("num_heads") or num_heads
    if num_heads is not None and num_heads != heads:
        source = "declares" if "num_heads" in declared else f"has the standard width-{dim} ViT's"
        raise CheckpointError(f"{source} {heads} heads, which --num-heads {num_heads} contradicts")
    if not heads:
        raise CheckpointError(f"has width {dim}, not a standard ViT width, and names no head count: pass "
                              "--num-heads")
    if not isinstance(heads, int) or heads < 1 or dim % heads:
        raise CheckpointError(f"cannot have {heads} heads: {heads} heads do not divide the width {dim}")
    patch, tokens = sd["patch_embed.proj.weight"].shape[-1], sd["pos_embed"].shape[1] - 1
    said = {k: meta[k] for k in ("patch_size", "img_size", "mlp_ratio") if k in meta}
    ratio = sd["blocks.0.mlp.fc1.weight"].shape[0] / dim
    if said.get("patch_size", patch) != patch or said.get("mlp_ratio", ratio) != ratio:
        raise CheckpointError(f"has metadata (patch_size {said.get('patch_size')}, mlp_ratio "
                              f"{said.get('mlp_ratio')}) that contradicts its weights (patch {patch}, MLP ratio "
                              f"{ratio:g})")
    size = said.get("img_size")
    if size is not None and (not isinstance(size, int) or size % patch or (size // patch) ** 2 != tokens):
        raise CheckpointError(f"declares img_size {size}, but its position table holds {tokens} patches "
                              f"({int(round(tokens ** 0.5)) * patch} px at patch {patch})")
    facts = {**said, "embed_dim": dim, "depth": found, "num_heads": heads}
    for k, v in (meta.get("timm_kwargs") or {}).items():  # the copy of the architecture for timm
        if k in facts and facts[k] != v:
            raise CheckpointError(f"has metadata that contradicts itself: {k} {facts[k]}, but {v} in timm_kwargs")
    return found, heads


def encoder_from_checkpoint(ckpt: dict, num_heads: int | None = None, depth: int | None = None) -> tuple[dict, dict]:
    """(encoder state dict with timm/MAE names, metadata) from any readable kind; fails with the
    list of missing weights when the encoder is incomplete, and on any contradiction between the
    tensors, the file's metadata and the standard ViT sizes (``check_architecture``). The head
    count, which no weight shape reveals, comes from the checkpoint's metadata, the standard ViT of
    its width or ``num_heads``; ``depth`` confirms a depth that no metadata or standard size gives."""
    kind = detect_kind(ckpt)
    sd = _strip(_state_dict(ckpt))
    if kind == "saim":
        sd = _fuse_qkv(sd)
    sd = {k: v for k, v in sd.items() if k.startswith(ENCODER_PREFIXES)}
    blocks = _block_indices(sd)
    if not blocks:
        raise CheckpointError(f"the {kind} checkpoint has no encoder blocks")
    gap = sorted(set(range(blocks[-1] + 1)) - set(blocks))
    if gap:
        raise CheckpointError(f"the {kind} checkpoint has a gap in its block indices (blocks {gap} absent of "
                              f"{blocks[-1] + 1}): a damaged or edited file")
    missing = [k for k in required_encoder_keys(len(blocks)) if k not in sd]
    if missing:
        raise CheckpointError(f"the {kind} checkpoint lacks {len(missing)} encoder weights: {missing[:8]}")
    nonfinite = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise CheckpointError(f"the {kind} checkpoint holds NaN or infinite weights in {len(nonfinite)} tensors "
                              f"({nonfinite[:4]}): the run that wrote it diverged; use an earlier checkpoint")
    meta = dict(ckpt.get("meta") or {})
    declared = declared_architecture(ckpt, kind)
    dim = sd["cls_token"].shape[-1]
    if declared.get("embed_dim", dim) != dim:
        raise CheckpointError(f"the {kind} checkpoint does not hold the encoder it declares (embed_dim "
                              f"{declared['embed_dim']} declared, {dim} found)")
    try:
        found_depth, heads = check_architecture(sd, declared, meta, num_heads, depth)
    except CheckpointError as e:
        raise CheckpointError(f"the {kind} checkpoint {e}") from None
    patch = sd["patch_embed.proj.weight"].shape[-1]
    meta.update(embed_dim=dim, depth=found_depth, num_heads=heads)
    meta.setdefault("patch_size", patch)
    meta.setdefault("img_size", int(round((sd["pos_embed"].shape[1] - 1) ** 0.5)) * patch)
    meta.setdefault("mlp_ratio", sd["blocks.0.mlp.fc1.weight"].shape[0] / dim)
    meta["source_kind"] = meta.get("source_kind", kind)
    meta["file_kind"] = kind
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
    meta = {k: v for k, v in meta.items() if k != "file_kind"}  # the kind of the file read, not of this one
    return {"format": FORMAT_ENCODER, "model": sd, "meta": {**meta, "timm_arch": arch, "timm_kwargs": kwargs}}


def describe_kind(meta: dict) -> str:
    """The kind of file an encoder was read from, and of the file it was first exported from."""
    kind, source = meta.get("file_kind"), meta.get("source_kind")
    return kind if source in (None, kind) else f"{kind}, exported from a {source} checkpoint"


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


def read_encoder(path: str | Path, num_heads: int | None = None, trust_pickle: bool = False,
                 depth: int | None = None) -> tuple[dict, dict]:
    """Encoder weights and metadata from any checkpoint kind the suite reads; an error names the file.
    ``trust_pickle``: only for the converter's explicit flag (``safe_io.load_file``)."""
    ckpt = load_file(path, trust_pickle=trust_pickle)
    try:
        return encoder_from_checkpoint(ckpt, num_heads, depth)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
