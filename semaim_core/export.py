"""Exported encoders: the encoder of a trained SemAIM model as the record every consumer reads,
written as .pth or safetensors with a model card beside it, and a SemAIM model built back from one."""
from __future__ import annotations

import json
from pathlib import Path

from .layouts import FORMAT_ENCODER, FORMAT_TRAIN, encoder_from_checkpoint, read_encoder, to_encoder
from .model import SemAIM, build_model
from .safe_io import atomic_write, save_atomic, save_safetensors
from .weights import load_verified, resize_pos_embed


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
    path = Path(path)
    if path.suffix == ".safetensors":
        header = {"format": FORMAT_ENCODER, "meta": json.dumps(record["meta"], default=str)}
        save_safetensors(record["model"], path, header)
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


def load_encoder(path: str | Path, img_size: int | None = None) -> SemAIM:
    """The encoder of ``path`` (an exported SemAIM encoder, or any kind the converter reads: MAE,
    SAIM, the authors', timm) as a SemAIM model in eval mode, at its pretraining size unless
    ``img_size`` is given; its ``forward_features`` and ``pooled_features`` give the features."""
    meta = read_encoder(path)[1]
    return semaim_from_encoder(path, img_size or meta["img_size"])


def semaim_from_encoder(path: str | Path | None, img_size: int, name: str = "semaim_vit_base_patch16", **kw):
    """A SemAIM model with the encoder of ``path`` (any kind the converter reads), or untrained."""
    if path is None:
        return build_model(name, img_size=img_size, **kw).eval()
    sd, meta = read_encoder(path)
    model = build_model(name, img_size=img_size, embed_dim=meta["embed_dim"], depth=meta["depth"],
                        num_heads=meta["num_heads"], mlp_ratio=meta["mlp_ratio"], **kw)
    # the checkpoint's own table, resized to this image size as ViTDet and mmseg do
    sd = dict(sd, pos_embed=resize_pos_embed(sd["pos_embed"], model.patch_embed.num_patches))
    load_verified(model, sd, f"SemAIM encoder <- {path}", allowed_missing=(r"^decoder", r"^ema_encoder"))
    return model.eval()
