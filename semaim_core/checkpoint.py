"""Checkpoints: atomic writes, the kinds of file the suite reads, conversion of an encoder to the
layouts of timm, detectron2 and mmseg, and the verified load that every consumer uses.

Kinds read (``detect_kind``):
  semaim-train    this suite's training checkpoint (``format`` = "semaim-train")
  semaim-encoder  this suite's exported encoder (``format`` = "semaim-encoder")
  semaim-authors  the authors' SemAIM release: ``state_dict`` with a ``module.`` prefix, a string under ``model``
  saim            SAIM: split q / k / v projections (fused into ``qkv`` here)
  mae             MAE releases and timm ViTs: ``{"model": sd}`` or a bare state dict with fused ``qkv``
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from .model import MODEL_SIZES

FORMAT_TRAIN, FORMAT_ENCODER = "semaim-train", "semaim-encoder"
KINDS = ("semaim-train", "semaim-encoder", "semaim-authors", "saim", "mae")
ENCODER_PREFIXES = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm.")
BLOCK_KEYS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, of the wrong kind or incomplete."""


def atomic_write(path: str | Path, write) -> Path:
    """``write(f)`` into a temporary file beside ``path``, then ``commit`` it: a crash leaves the
    old file or the new one, never a torn one. (A killed write leaves ``.<name>.tmp-<pid>``,
    which the next run removes.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def commit(tmp: str | Path, path: str | Path):
    """Make the complete file ``tmp`` the file ``path``: fsync it, rename it over ``path``, fsync the folder."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(Path(path).parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_atomic(obj, path: str | Path) -> Path:
    """torch.save, atomically (``atomic_write``)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, pickle from elsewhere, ...
        raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}: {e}); "
                              "is it a complete PyTorch checkpoint?") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict of weights")
    return ckpt


def _load_safetensors(path: Path) -> dict:
    """A safetensors file as the dict the other readers see: the suite's encoder (its metadata
    under "meta") or a bare state dict."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            sd = {k: f.get_tensor(k) for k in f.keys()}
            header = f.metadata() or {}
    except Exception as e:  # not a safetensors file, or a truncated one
        raise CheckpointError(f"cannot read safetensors file {path} ({type(e).__name__}: {e})") from e
    if header.get("format") == FORMAT_ENCODER:
        return {"format": FORMAT_ENCODER, "model": sd, "meta": json.loads(header.get("meta", "{}"))}
    return sd


def export_encoder(model, **facts) -> dict:
    """The encoder of a SemAIM ``model`` as the suite's encoder record ``{"format", "model",
    "meta"}``: timm/MAE names, checked complete, with its architecture and ``facts`` (how it was
    trained) in ``meta``. What pretraining exports and what every consumer reads."""
    sd, meta = encoder_from_checkpoint(dict(format=FORMAT_TRAIN, model=model.encoder_state_dict(),
                                            config=dict(model_config=model.config)))
    return to_encoder(sd, {**meta, **facts})


def save_encoder(record: dict, path: str | Path) -> Path:
    """An encoder record (``export_encoder``, ``to_encoder``) as .pth or as safetensors with the
    metadata in its header (.safetensors), atomically, with a model card (``<stem>.md``) beside it."""
    from safetensors.torch import save

    path = Path(path)
    if path.suffix == ".safetensors":
        header = {"format": FORMAT_ENCODER, "meta": json.dumps(record["meta"], default=str)}
        blob = save({k: v.contiguous() for k, v in record["model"].items()}, metadata=header)
        atomic_write(path, lambda f: f.write(blob))
    else:
        save_atomic(record, path)
    atomic_write(path.with_suffix(".md"), lambda f: f.write(model_card(record["meta"], path).encode()))
    return path


def model_card(meta: dict, path: Path) -> str:
    """A short markdown card: what the encoder is, how it was trained, and how to load it."""
    trained = [f"- {label}: {meta[key]}" for key, label in (
        ("order", "autoregression order"), ("target", "prediction target"), ("data", "pretraining data"),
        ("epochs", "epochs"), ("steps", "optimizer steps"), ("final_loss", "final training loss"),
        ("suite_commit", "suite commit"), ("source_kind", "converted from")) if meta.get(key) is not None]
    name = path.name
    return f"""# SemAIM encoder `{name}`

ViT with patch {meta['patch_size']}, width {meta['embed_dim']}, depth {meta['depth']}, {meta['num_heads']} heads,
MLP ratio {meta['mlp_ratio']:g}, pretrained at {meta['img_size']} px (timm: `{meta['timm_arch']}`).
Keys follow timm / MAE (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.i.*`, `norm`).

## Pretraining
{chr(10).join(trained) or '- (no record)'}

## Loading
- timm: `cls.backbone.timm_vit_from_encoder("{name}", num_classes=1000)` (verified load;
  the position table is resized for another `img_size`), or `timm.create_model("{meta['timm_arch']}",
  num_classes=0, **meta["timm_kwargs"])` and `load_state_dict` of the weights (only the head is missing).
- detectron2 (ViTDet): `python -m det.train_net --config vitdet_semaim.py train.init_checkpoint={name}`
- mmseg (UperNet): `python -m seg.tools.train upernet_semaim.py --cfg-options model.backbone.checkpoint={name}`
- other layouts: `python tools/convert_checkpoint.py {name} OUT --to timm|detectron2|mmseg`
"""


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
    """What a checkpoint says it is (depth, width, heads), from its metadata or, for the authors'
    checkpoints, their model name (aim_base / aim_large / aim_huge); {} when it says nothing."""
    if kind == FORMAT_ENCODER:
        meta = ckpt.get("meta") or {}
    elif kind == FORMAT_TRAIN:
        meta = (ckpt.get("config") or {}).get("model_config") or {}
    elif kind == "semaim-authors":
        meta = MODEL_SIZES.get(str(ckpt.get("model", "")).removeprefix("aim_").removeprefix("saim_"), {})
    else:
        meta = {}
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


def resize_pos_embed(pos: torch.Tensor, num_patches: int) -> torch.Tensor:
    """(1, 1 + n, D) [CLS] + square-grid position table -> (1, 1 + num_patches, D), bicubic on the
    grid as ViTDet and mmseg do when the fine-tuning size differs from the pretraining size."""
    old, new = int(round((pos.shape[1] - 1) ** 0.5)), int(round(num_patches ** 0.5))
    if old * old != pos.shape[1] - 1 or new * new != num_patches:
        raise CheckpointError(f"cannot resize a {pos.shape[1] - 1}-patch position table to {num_patches}: "
                              "both grids must be square")
    if old == new:
        return pos
    grid = pos[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = torch.nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, new * new, -1).to(pos.dtype)], dim=1)


def load_verified(module: torch.nn.Module, sd: dict, what: str, allowed_missing=()) -> dict:
    """Load ``sd`` into ``module`` and report; fail if any weight of ``sd`` found no place, or any
    parameter of ``module`` got none unless it matches ``allowed_missing`` (regexes).

    Shapes are checked too: a mismatch is an error, not a silent skip."""
    own = module.state_dict()
    unexpected = sorted(k for k in sd if k not in own)
    mismatched = sorted(k for k in sd if k in own and own[k].shape != sd[k].shape)
    missing = sorted(k for k in own if k not in sd and not any(re.search(p, k) for p in allowed_missing))
    if unexpected or mismatched or missing:
        lines = [f"{what}: the weights do not fit the model"]
        if missing:
            lines.append(f"  {len(missing)} model weights got no value: {missing[:8]}")
        if unexpected:
            lines.append(f"  {len(unexpected)} checkpoint weights found no place: {unexpected[:8]}")
        for k in mismatched[:8]:
            lines.append(f"  shape of {k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}")
        raise CheckpointError("\n".join(lines))
    result = module.load_state_dict(sd, strict=False)  # strict=False only for the allowed leftovers, checked above
    report = dict(loaded=len(sd), left_at_init=sorted(result.missing_keys))
    print(f"{what}: loaded {report['loaded']} tensors; left at initialization (allowed): "
          f"{len(report['left_at_init'])} {report['left_at_init'][:4]}")
    return report


def read_encoder(path: str | Path, num_heads: int | None = None) -> tuple[dict, dict]:
    """Encoder weights and metadata from any checkpoint kind the suite reads."""
    return encoder_from_checkpoint(load_file(path), num_heads)


def semaim_from_encoder(path: str | Path | None, img_size: int, name: str = "semaim_vit_base_patch16", **kw):
    """A SemAIM model with the encoder of ``path`` (any kind the converter reads), or untrained."""
    from . import build_model

    if path is None:
        return build_model(name, img_size=img_size, **kw).eval()
    sd, meta = read_encoder(path)
    model = build_model(name, img_size=img_size, embed_dim=meta["embed_dim"], depth=meta["depth"],
                        num_heads=meta["num_heads"], mlp_ratio=meta["mlp_ratio"], **kw)
    # the checkpoint's own table, resized to this image size as ViTDet and mmseg do
    sd = dict(sd, pos_embed=resize_pos_embed(sd["pos_embed"], model.patch_embed.num_patches))
    load_verified(model, sd, f"SemAIM encoder <- {path}", allowed_missing=(r"^decoder", r"^ema_encoder"))
    return model.eval()
