"""Training machinery for mmseg: a layer-decay constructor that provably covers the SemAIM
backbone, and a runner whose checkpoints are written atomically, hold only plain data, are read by
the suite's safe reader, and resume exactly."""
from __future__ import annotations

import logging
import math
import os
import re
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.dist import get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.model import is_model_wrapper
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
from mmengine.optim.scheduler.param_scheduler import _ParamScheduler
from mmengine.runner import CheckpointLoader, Runner
from mmseg.models.backbones import BEiT
from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS, PARAM_SCHEDULERS, RUNNERS

from seg.fast_config import FormattedOnceConfig
from semaim_core.rundir import RunDirError, drop_rows_after
from semaim_core.runlog import StepRows, step_row
from semaim_core.safe_io import CheckpointError, commit, load_file
from semaim_core.training import all_rng_states, own_rng_state, rng_state, set_rng_state, set_torch_rng_state
from semaim_core.weights import load_verified


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


@PARAM_SCHEDULERS.register_module()
class WarmupOneCycleLR(LRSchedulerMixin, _ParamScheduler):
    """DINOv3's WarmupOneCycleLR (dinov3/eval/segmentation/schedulers.py, and depth/schedulers.py
    alike, with pct_start 0 and a cosine). At iteration t of ``total``, after the ``warmup``
    iterations the lr anneals from the peak by a cosine, peak x (f + (1 - f) (1 + cos(pi (t + 1) / total)) / 2),
    to the floor f = 1 / (``div_factor`` x ``final_div_factor``) (0 with the segmentation protocol's
    final_div_factor inf). The warm-up, with ``warmup_ratio`` > 0 (segmentation): peak x (1 - k) x
    (1 - t / total), k = (1 - t / warmup) x (1 - warmup_ratio); with warmup_ratio 0 (depth): peak x
    (1 / final_div_factor + t / warmup x (1 + cos(pi t / total)) / 2). mmengine's LinearLR and
    CosineAnnealingLR compose to a cosine during the warm-up instead, 3.5 % of the peak away from it
    at the warm-up's end. Its beta1 schedule is seg.depth.WarmupOneCycleMomentum."""

    def __init__(self, optimizer, warmup: int, warmup_ratio: float, total: int, final_div_factor: float = math.inf,
                 div_factor: float = 25.0, **kwargs):
        self.warmup, self.warmup_ratio, self.total = warmup, warmup_ratio, total
        self.final_div_factor, self.floor = final_div_factor, 1 / (div_factor * final_div_factor)
        # the runner passes an ``end`` of its own (its epoch count, unless by_epoch=False is given)
        super().__init__(optimizer, **{**kwargs, "begin": 0, "end": total, "by_epoch": False})

    def factor(self, t: int) -> float:
        if t < self.warmup and self.warmup_ratio:
            k = (1 - t / self.warmup) * (1 - self.warmup_ratio)
            return (1 - k) * (1 - t / self.total)
        if t < self.warmup:
            return 1 / self.final_div_factor + t / self.warmup * (1 + math.cos(math.pi * t / self.total)) / 2
        return self.floor + (1 - self.floor) * (1 + math.cos(math.pi * (t + 1) / self.total)) / 2

    def _get_value(self):
        return [base * self.factor(self.last_step) for base in self.base_values]


class ExactResumeHook(Hook):
    """What mmengine's resume leaves out, so that a resumed run continues exactly as the
    uninterrupted one: every rank's RNG state is saved in each checkpoint, and this rank's torch
    (and CUDA) generator, which drop path and dropout draw from, is restored at the first iteration
    after the resume. numpy's and Python's generators are left to mmengine: they drive the data
    augmentation, which mmengine replays when it advances the loader past the trained iterations
    (in the loader workers, seeded per worker, or in this process with num_workers=0).
    Validation runs on a copy of the RNG, so when and how often it runs does not change training."""

    priority = "NORMAL"  # after_train_iter runs before the CheckpointHook (VERY_LOW) saves

    def __init__(self):
        self.states, self.pending, self.train_rng = None, None, None

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if get_world_size() > 1:  # a collective: every rank, every iteration; the master's checkpoint hook saves them
            self.states = all_rng_states()

    def before_save_checkpoint(self, runner, checkpoint):
        checkpoint["rng_per_rank"] = self.states or all_rng_states()

    def after_load_checkpoint(self, runner, checkpoint):
        if getattr(runner, "_resuming", False):  # load_from (weights only) keeps the fresh seed
            states = checkpoint.get("rng_per_rank")
            if states is None:
                print_log("the checkpoint holds no RNG states (written before they were saved): the resumed run "
                          "draws other random numbers than the uninterrupted one would", logger="current",
                          level=logging.WARNING)
            self.pending = states and own_rng_state(states)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self.pending:
            set_torch_rng_state(self.pending)
            self.pending = None

    def before_val(self, runner):
        self.train_rng = rng_state()

    def after_val(self, runner):
        set_rng_state(self.train_rng)


class StepRowsHook(Hook):
    """metrics.jsonl in the suite's one schema (``semaim_core.runlog.step_row``) beside mmengine's
    vis_data/scalars.json: every training iteration's loss terms, lr and time, from rank 0."""

    priority = "BELOW_NORMAL"  # after the IterTimerHook has measured the iteration

    def __init__(self):
        self.rows = None

    def before_train(self, runner):
        if is_main_process():
            self.rows = StepRows(runner.work_dir, runner.iter)  # a resume drops what a killed run logged past it

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if self.rows is None:
            return
        losses = {k: v.item() if hasattr(v, "item") else float(v) for k, v in (outputs or {}).items() if "loss" in k}
        lr = next(iter(runner.optim_wrapper.get_lr().values()))[0]
        timer = runner.message_hub.get_scalar("train/time") if "train/time" in runner.message_hub.log_scalars else None
        self.rows.write(step_row(runner.iter + 1, None, losses, lr, timer.current() if timer else None))

    def after_train(self, runner):
        if self.rows is not None:
            self.rows.close()


class PlainLogScalarsHook(Hook):
    """The message hub's logged scalars (``HistoryBuffer``s) go into a checkpoint as plain numbers
    and come back as ``HistoryBuffer``s on a resume: pickled as they are, they reference their
    statistics methods through ``getattr``, which no safe reader accepts."""

    priority = "VERY_HIGH"

    def before_save_checkpoint(self, runner, checkpoint):
        hub = checkpoint["message_hub"]
        checkpoint["message_hub"] = {**hub, "log_scalars": {
            key: dict(log_history=buffer._log_history.tolist(), count_history=buffer._count_history.tolist(),
                      max_length=buffer.max_length) for key, buffer in hub["log_scalars"].items()}}

    def after_load_checkpoint(self, runner, checkpoint):
        hub = checkpoint.get("message_hub")
        if hub:
            hub["log_scalars"] = {key: HistoryBuffer(**v) if isinstance(v, dict) else v
                                  for key, v in hub["log_scalars"].items()}


@RUNNERS.register_module()
class SemAIMRunner(Runner):
    """mmengine's Runner, with resumes that are exact (``ExactResumeHook``), strict, confined to
    the work dir and free of repeated log rows, and checkpoints written under a temporary name and
    committed (fsync, rename), so an interrupted save never replaces a good checkpoint with a torn one.
    Building one routes every checkpoint mmengine reads to the safe reader (``route_checkpoint_reads``)."""

    def __init__(self, *args, cfg=None, **kwargs):
        route_checkpoint_reads()  # before the model's init_cfg can read a file
        if isinstance(cfg, Config):
            cfg = FormattedOnceConfig.of(cfg)  # the log, the work dir's copy and each checkpoint format it
        super().__init__(*args, cfg=cfg, **kwargs)
        self.register_hook(ExactResumeHook())
        self.register_hook(PlainLogScalarsHook())
        self.register_hook(StepRowsHook())

    def setup_env(self, env_cfg: dict):
        """mmengine's ``init_dist`` selects a CUDA device before it starts the process group, which
        fails without a GPU: a CPU run under torchrun (tests, a CPU machine) starts it here, on gloo,
        and mmengine takes the group as it finds it."""
        if self.distributed and not dist.is_initialized() and not torch.cuda.is_available():
            if self.launcher != "pytorch":
                raise RuntimeError(f"--launcher {self.launcher} needs GPUs (mmengine selects one per process); "
                                   "without GPUs start the processes with torchrun and --launcher pytorch")
            timeout = (env_cfg.get("dist_cfg") or {}).get("timeout")
            dist.init_process_group("gloo", **({"timeout": timedelta(seconds=timeout)} if timeout else {}))
        super().setup_env(env_cfg)

    def wrap_model(self, model_wrapper_cfg, model):
        """mmengine gives DDP ``device_ids=[local rank]``, which CPU modules refuse: without a GPU the
        model is replicated without device ids."""
        if self.distributed and model_wrapper_cfg is None and not torch.cuda.is_available():
            model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False,
                                     find_unused_parameters=self.cfg.get("find_unused_parameters", False))
        return super().wrap_model(model_wrapper_cfg, model)

    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs):
        tmp = f".{filename}.tmp-{os.getpid()}"
        try:
            super().save_checkpoint(out_dir, tmp, *args, **kwargs)  # master only
            if is_main_process():
                commit(os.path.join(out_dir, tmp), os.path.join(out_dir, filename))
        finally:
            if os.path.exists(os.path.join(out_dir, tmp)):
                os.remove(os.path.join(out_dir, tmp))

    def load_or_resume(self):
        """A resume reads ``last_checkpoint`` of this work dir; a name in it is taken inside the work
        dir, and a path outside it (a copied work dir) is refused."""
        if self._resume and self._load_from is None and not self._has_loaded:
            self._load_from = own_last_checkpoint(self.work_dir)
        return super().load_or_resume()

    def resume(self, *args, **kwargs):
        """mmengine's resume, but the model must match the checkpoint exactly: a resume after a
        config change fails instead of loading what fits. Rows that earlier sessions of this run
        logged past the checkpoint are dropped from their ``vis_data/scalars.json``."""
        self._resuming = True
        try:
            out = super().resume(*args, **kwargs)
        finally:
            self._resuming = False
        if is_main_process():
            for older in sorted(Path(self.work_dir).glob("*/vis_data/scalars.json")):
                if older.parent.parent.name != self.timestamp:
                    drop_rows_after(older, "step", self.iter)
        return out

    def load_checkpoint(self, filename, map_location="cpu", strict=False, revise_keys=((r"^module\.", ""),)):
        """mmengine's, but every weight must fit, for ``load_from`` as for a resume, on every rank:
        mmengine would load what fits, warn, and train on (and its strict mode raises on rank 0 only)."""
        checkpoint = read_checkpoint(filename)
        self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        sd = checkpoint.get("state_dict", checkpoint)
        for pattern, replacement in revise_keys:
            sd = {re.sub(pattern, replacement, k): v for k, v in sd.items()}
        what = "--resume" if getattr(self, "_resuming", False) else "load_from"
        try:
            load_verified(self.model.module if is_model_wrapper(self.model) else self.model, sd,
                          f"{what} {filename}")
        except CheckpointError as e:
            raise CheckpointError(f"{e}\n{what} takes a checkpoint that seg/tools/train.py wrote with this model "
                                  "config; a pretrained encoder goes to model.backbone.checkpoint") from None
        self._has_loaded = True
        self.logger.info(f"loaded {filename} ({what})")
        return checkpoint


def own_last_checkpoint(work_dir: str) -> str | None:
    """The checkpoint ``work_dir/last_checkpoint`` names, which must lie in ``work_dir``."""
    tag = Path(work_dir) / "last_checkpoint"
    if not tag.is_file():
        return None
    name = tag.read_text().strip()
    if not name:
        raise RunDirError(f"{tag} is empty: write the name of a checkpoint of this run into it (e.g. iter_1000.pth), "
                          "or delete it and start without --resume")
    path = (Path(work_dir) / name).resolve()  # a bare name is taken inside the work dir
    if path.parent != Path(work_dir).resolve():
        raise RunDirError(f"{tag} names {name}, outside this work dir {Path(work_dir).resolve()} (was the work dir "
                          f"copied?): a run resumes only from its own checkpoints. Write the name of one of them "
                          f"(e.g. {Path(name).name}) into {tag}, or start without --resume")
    if not path.is_file():
        raise RunDirError(f"{tag} names {name}, which does not exist: write the name of an existing checkpoint of "
                          "this run into it, or start without --resume")
    return str(path)


def read_checkpoint(filename, map_location=None):
    """Every file mmengine reads (resume, ``load_from``, ``init_cfg`` Pretrained) goes through the
    suite's safe reader: no pickled code runs, and a refused file says why and what to do.
    ``HistoryBuffer``: checkpoints written before ``PlainLogScalarsHook`` pickled it from plain numbers."""
    return load_file(filename, extra_globals=(HistoryBuffer,))


def route_checkpoint_reads():
    """mmengine picks a loader by the path's scheme: a local file, http(s)://, torchvision://,
    open-mmlab://, s3://, ... and any scheme a plugin registers later; the others download and call
    torch.load. From this call on, every path goes to ``read_checkpoint``, which reads local files
    and refuses addresses by name. The runner makes this call when it is built."""
    CheckpointLoader._get_checkpoint_loader = classmethod(lambda cls, path: read_checkpoint)
