"""Training machinery for mmseg: a layer-decay constructor that provably covers the SemAIM
backbone, and a runner whose checkpoints are written atomically."""
from __future__ import annotations

import os
import re

from mmengine.logging import print_log
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.runner import CheckpointLoader, Runner
from mmseg.models.backbones import BEiT
from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS, RUNNERS

from semaim_core.files import allow_globals, commit, load_file


def vit_layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for block i, depth + 1 for everything after the blocks.
    Every backbone parameter must be one of these: anything else is an error, not a silent 1.0."""
    embeddings = ("backbone.cls_token", "backbone.pos_embed", "backbone.mask_token")
    if name in embeddings or name.startswith("backbone.patch_embed."):
        return 0
    m = re.match(r"backbone\.layers\.(\d+)\.", name)
    if m:
        return int(m.group(1)) + 1
    if name.startswith("backbone.") and not name.startswith(("backbone.ln1.", "backbone.ln2.")):
        raise ValueError(f"layer decay: backbone parameter {name} is neither an embedding, a block nor the final norm")
    return depth + 1


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class SemAIMLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise lr decay for ViT backbones (``layers.i`` blocks) of any class name.

    mmseg's ``LayerDecayOptimizerConstructor`` picks its rule from the backbone's class name and
    its ``pos_embed`` / ``cls_token`` no-decay test never matches full parameter names. Here: the
    depth comes from the backbone itself (``paramwise_cfg.num_layers``, if given, must agree),
    block i gets ``decay_rate ** (depth - i)``, the embeddings ``decay_rate ** (depth + 1)``,
    neck and heads 1.0; biases, norms (1-D), ``pos_embed`` and ``cls_token`` get no weight decay."""

    def add_params(self, params, module, **kwargs):
        backbone = module.backbone
        if not isinstance(backbone, BEiT):
            raise TypeError(f"SemAIMLayerDecayOptimizerConstructor needs a ViT backbone with `layers.i` blocks "
                            f"(mmseg BEiT/MAE/SemAIMViT), got {type(backbone).__name__}")
        depth = len(backbone.layers)
        given = self.paramwise_cfg.get("num_layers")
        if given is not None and given != depth:
            raise ValueError(f"paramwise_cfg.num_layers={given} but the backbone has {depth} blocks")
        rate = self.paramwise_cfg.get("decay_rate", self.paramwise_cfg.get("layer_decay_rate"))
        if rate is None:
            raise ValueError("paramwise_cfg needs decay_rate (the layer-wise lr decay, e.g. 0.65)")
        groups = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            short = name.rsplit(".", 1)[-1]
            no_decay = param.ndim == 1 or name.endswith(".bias") or short in ("pos_embed", "cls_token")
            layer = vit_layer_id(name, depth)
            key = f"layer_{layer}_{'no_decay' if no_decay else 'decay'}"
            if key not in groups:
                scale = rate ** (depth + 1 - layer)
                groups[key] = dict(params=[], param_names=[], lr_scale=scale, lr=scale * self.base_lr,
                                   weight_decay=0.0 if no_decay else self.base_wd, group_name=key)
            groups[key]["params"].append(param)
            groups[key]["param_names"].append(name)
        print_log(f"layer decay {rate} over {depth} blocks: " + ", ".join(
            f"{k} x{g['lr_scale']:.4g} ({len(g['params'])})" for k, g in sorted(groups.items())), logger="current")
        params.extend(groups.values())


@RUNNERS.register_module()
class SemAIMRunner(Runner):
    """mmengine's Runner, writing each checkpoint under a temporary name and committing it (fsync,
    rename), so an interrupted save never replaces a good checkpoint with a torn one."""

    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs):
        tmp = f".{filename}.tmp-{os.getpid()}"
        try:
            super().save_checkpoint(out_dir, tmp, *args, **kwargs)
            commit(os.path.join(out_dir, tmp), os.path.join(out_dir, filename))
        finally:
            if os.path.exists(os.path.join(out_dir, tmp)):
                os.remove(os.path.join(out_dir, tmp))

    def resume(self, *args, **kwargs):
        """mmengine's resume, but the model must match the checkpoint exactly: a resume after a
        config change fails instead of loading what fits."""
        self._resuming = True
        try:
            return super().resume(*args, **kwargs)
        finally:
            self._resuming = False

    def load_checkpoint(self, filename, map_location="cpu", strict=False, *args, **kwargs):
        return super().load_checkpoint(filename, map_location, strict or getattr(self, "_resuming", False),
                                       *args, **kwargs)


def _history_buffer_reduce(buffer: HistoryBuffer):
    return HistoryBuffer, (buffer._log_history.tolist(), buffer._count_history.tolist(), buffer.max_length)


# mmengine checkpoints hold the message hub's HistoryBuffers, which pickle references to their
# statistics methods through `getattr`, which no safe loader accepts. Pickled as plain numbers
# instead, they are plain data, added to the suite's allow-list.
HistoryBuffer.__reduce__ = _history_buffer_reduce
allow_globals(HistoryBuffer)


@CheckpointLoader.register_scheme(prefixes="", force=True)
def _load_local_checkpoint(filename, map_location):
    """Every local file mmengine reads (resume, ``load_from``, ``init_cfg`` Pretrained) goes through
    the suite's safe loader: no pickled code runs, and a refused file says why and what to do."""
    return load_file(filename)
