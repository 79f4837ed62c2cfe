"""The pretraining engine (MAE's engine_pretrain.py to ``pretrain.py``'s main_pretrain.py): the
``Trainer`` that runs a ``recipe.Config`` on one process or under torchrun (DDP, multi-GPU,
multi-node) or on the CPU, with the data order and augmentation of every step a function of the
seed alone, so that a resumed run continues exactly as the uninterrupted one.

Every run directory holds ``config.json``, ``metrics.jsonl`` (one JSON object per logged step),
TensorBoard logs under ``tb/``, training checkpoints ``checkpoint-<step>.pth`` (atomic, the last
``--keep`` kept) and, at the end, the exported encoder ``encoder.pth`` (and ``.safetensors``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from timm.utils import random_seed

from . import build_model
from .data import ImageDataset, SeededSamples, find_images, pretrain_transform
from .distributed import all_reduce_mean, init_distributed
from .export import export_encoder, save_encoder
from .gpu_loader import pretraining_loader
from .layouts import FORMAT_TRAIN
from .monitor import Monitor
from .optim import build_optimizer, build_scheduler
from .provenance import suite_commit
from .recipe import OPERATIONAL, STOPPING, Config
from .rundir import (
    RECIPE,
    RunDirError,
    canonical,
    file_list_digest,
    open_run,
    read_recipe,
    recipe_differences,
    release_lock,
    with_input_digests,
)
from .runlog import RunLog, step_row
from .safe_io import CheckpointError, load_file, save_atomic, write_json_atomic
from .training import (
    AMP_DTYPES,
    LossWatch,
    NonFiniteError,
    all_rng_states,
    autocast,
    grad_scaler,
    optimizer_step,
    require_format,
    restore,
    training_state,
)

logger = logging.getLogger(__name__)


def non_finite(tensors: dict) -> list[str]:
    """Names of the floating-point tensors in a (nested) state dict that hold a NaN or an inf."""
    bad = []
    for name, value in tensors.items():
        if isinstance(value, dict):
            bad += [f"{name}.{k}" for k in non_finite(value)]
        elif torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            bad.append(str(name))
    return bad


# ---------------------------------------------------------------------------- data order
class ResumableSampler(torch.utils.data.Sampler):
    """Shuffled indices of one epoch for one rank (a pure function of seed and epoch), starting
    at a given position, so a resumed run sees exactly the samples the uninterrupted one would."""

    def __init__(self, size: int, rank: int, world: int, seed: int, batch_size: int):
        self.size, self.rank, self.world, self.seed, self.batch_size = size, rank, world, seed, batch_size
        self.per_rank = (size // (world * batch_size)) * batch_size  # whole batches only
        if self.per_rank == 0:
            raise ValueError(f"{size} images are fewer than one batch of {batch_size} per process x {world}")
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0):
        self.epoch, self.start = epoch, start_batch * self.batch_size

    def epoch_indices(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.size, generator=g)[: self.per_rank * self.world]
        return perm[self.rank::self.world].tolist()

    def __iter__(self):
        return iter([(self.epoch, i) for i in self.epoch_indices()[self.start:]])

    def __len__(self):
        return self.per_rank - self.start

    @property
    def batches_per_epoch(self) -> int:
        return self.per_rank // self.batch_size


# ---------------------------------------------------------------------------- checkpoints
def checkpoint_paths(output_dir: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in output_dir.glob("checkpoint-*.pth")
             if (m := re.fullmatch(r"checkpoint-(\d+)\.pth", p.name))]
    return [p for _, p in sorted(found)]


class Trainer:
    def __init__(self, cfg: Config, model_overrides: dict | None = None):
        """``model_overrides``: architecture settings beyond the named model (tools and tests)."""
        if not cfg.data:
            raise ValueError("--data is required: an ImageNet-style folder or a folder of images")
        if not cfg.output_dir:
            raise ValueError("--output-dir is required")
        if cfg.keep < 1:  # 0 would keep every checkpoint, -1 delete all but the oldest
            raise ValueError(f"--keep {cfg.keep}: keep at least the newest checkpoint (--keep 1 or more)")
        cfg.data = str(Path(cfg.data).resolve())  # the recipe names the folder, wherever the run starts from
        self.cfg = cfg
        self.rank, self.world, self.device = init_distributed(cfg.device)
        self.out = Path(cfg.output_dir)
        self.is_main = self.rank == 0
        files = find_images(cfg.data)
        recipe = {k: v for k, v in asdict(cfg).items() if k not in OPERATIONAL}
        if recipe["loader"] == "torch":  # the default loader, as recipes written before --loader existed
            del recipe["loader"]
        recipe.update(world_size=self.world, model_overrides=model_overrides or {},
                      data_files=file_list_digest(files, Path(cfg.data)))
        recipe = with_input_digests(recipe, ["teacher_weights"])
        given = self.read_given_checkpoint(cfg.resume, recipe)  # --resume PATH: checked before the claim
        if not 0 < cfg.monitor_every <= 1:
            raise ValueError(f"--monitor-every {cfg.monitor_every}: a fraction of the schedule, above 0 and at most 1")
        self.monitor = Monitor(*cfg.monitor, cfg.img_size, cfg.batch_size, self.device) if cfg.monitor else None
        if self.is_main:  # before anything is read or written: one run per directory
            open_run(self.out, recipe, overwrite=cfg.overwrite, fresh=cfg.resume is None, stopping=STOPPING,
                     allow_change=cfg.allow_recipe_change, change_flag="--allow-recipe-change")
        if self.world > 1:
            dist.barrier()
        random_seed(cfg.seed, self.rank)  # torch, numpy and random

        self.dataset = ImageDataset(files, pretrain_transform(cfg.img_size), cfg.skip_unreadable,
                                    cfg.max_image_pixels)
        self.sampler = ResumableSampler(len(self.dataset), self.rank, self.world, cfg.seed, cfg.batch_size)
        self.steps_per_epoch = self.sampler.batches_per_epoch // cfg.accum_iter
        if self.steps_per_epoch == 0:
            raise ValueError(f"one epoch has {self.sampler.batches_per_epoch} batches, "
                             f"fewer than --accum-iter {cfg.accum_iter}")
        self.total_steps = self.steps_per_epoch * cfg.epochs

        self.model = build_model(cfg.model, **cfg.model_overrides(), **(model_overrides or {})).to(self.device)
        self.eff_batch = cfg.batch_size * cfg.accum_iter * self.world
        self.lr = cfg.lr if cfg.lr is not None else cfg.blr * self.eff_batch / 256
        self.optimizer = build_optimizer(self.model, self.lr, cfg.weight_decay, tuple(cfg.betas))
        warmup = self.steps_per_epoch * cfg.warmup_epochs
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, warmup, cfg.min_lr)
        self.amp = AMP_DTYPES[cfg.dtype]
        self.scaler = grad_scaler(self.device, self.amp)
        self.step = 0          # optimizer steps done
        self.last_loss = None
        self.resume_from(cfg.resume, given)

        net = self.model
        if self.world > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.net = torch.compile(net) if cfg.compile else net

    # -------------------------------------------------------------- checkpoints
    def state(self, rng: list[dict] | None = None) -> dict:
        return training_state(FORMAT_TRAIN, self.model, self.optimizer, self.scaler, rng, step=self.step,
                              config=dict(asdict(self.cfg), model_config=self.model.config))

    def last_good(self) -> str:
        found = checkpoint_paths(self.out)
        return str(found[-1]) if found else "none written yet"

    def save(self):
        rng = all_rng_states()  # every rank takes part; rank 0 writes them all
        if not self.is_main:
            return
        state = self.state(rng)
        bad = non_finite(state["model"]) + non_finite({"optimizer": state["optimizer"]["state"]})
        if bad:  # never write (or name as good) weights a diverged step produced
            raise NonFiniteError(f"non-finite values in {len(bad)} tensors at step {self.step} ({bad[:4]}): "
                                     f"not saving. The last good checkpoint is kept ({self.last_good()})")
        path = save_atomic(state, self.out / f"checkpoint-{self.step:08d}.pth")
        for old in checkpoint_paths(self.out)[: -self.cfg.keep]:
            old.unlink()
        return path

    def read_given_checkpoint(self, resume: str | None, recipe: dict) -> dict | None:
        """The checkpoint of ``--resume PATH``, whose recipe (its run's run.json beside it, else the
        config it holds) must be this start's: a path to another run's checkpoint does not start a
        new recipe from that run's state unless --allow-recipe-change says so."""
        if resume in (None, "auto"):
            return None
        ckpt = require_format(load_file(resume), resume, FORMAT_TRAIN, "a SemAIM training checkpoint",
                              "to start from pretrained weights convert them first (tools/convert_checkpoint.py)")
        beside = Path(resume).parent / RECIPE
        if beside.is_file():
            stored, source = read_recipe(beside), beside
        else:  # a checkpoint copied on its own: the settings it holds
            stored = {k: v for k, v in (ckpt.get("config") or {}).items() if k in recipe}
            recipe, source = {k: recipe[k] for k in stored}, f"the config in {resume}"
        diffs = recipe_differences(canonical(stored), canonical(recipe), ignore=STOPPING)
        if diffs and not self.cfg.allow_recipe_change:
            raise RunDirError(f"--resume {resume}: that run's recipe ({source}) differs from this one, so resuming "
                              "from it would mix two experiments:\n  " + "\n  ".join(diffs) + "\nStart with the "
                              "same settings, or pass --allow-recipe-change to continue from it with the change on "
                              "purpose (it is recorded in the run's recipe_changes.jsonl)")
        return ckpt

    def resume_from(self, resume: str | None, given: dict | None = None):
        """Continue from ``given`` (the checkpoint of --resume PATH), or with "auto" from the newest
        readable checkpoint of the run directory."""
        if not resume:
            return
        if resume == "auto":
            ckpt, path = self.newest_readable_checkpoint()
            if ckpt is None:
                return
        else:
            ckpt, path = given, Path(resume)
        restore(ckpt, self.model, self.optimizer, self.scaler)
        self.step = ckpt["step"]
        if self.is_main:
            logger.info(f"resumed from {path} at step {self.step}")

    def newest_readable_checkpoint(self):
        """(checkpoint, path) of the newest checkpoint in the run directory that loads; a torn or
        corrupt newer one is reported and passed over."""
        found = checkpoint_paths(self.out)
        for path in reversed(found):
            try:
                return load_file(path), path
            except CheckpointError as e:
                logger.warning(f"skipping unreadable checkpoint {path.name} ({e}); trying the one before it")
        if found:
            raise CheckpointError(f"none of the {len(found)} checkpoints in {self.out} can be read: "
                                  "remove them to start anew, or pass --resume PATH")
        return None, None

    def export(self, final_loss: float | None = None) -> Path:
        """encoder.pth and encoder.safetensors (the same weights and metadata) and the model card encoder.md."""
        record = export_encoder(self.model, order=self.cfg.order, target=self.cfg.target, steps=self.step,
                                data=self.cfg.data, epochs=self.cfg.epochs, final_loss=final_loss,
                                suite_commit=suite_commit())
        save_encoder(record, self.out / "encoder.safetensors")
        return save_encoder(record, self.out / "encoder.pth")

    # -------------------------------------------------------------- training
    def ema_decay(self, epoch: int) -> float:
        """The EMA similarity encoder's decay in ``epoch`` (the authors set it at each epoch start)."""
        ramp = min(epoch / self.cfg.ema_ramp_epochs, 1.0) if self.cfg.ema_ramp_epochs else 1.0
        return self.cfg.ema_decay + ramp * (self.cfg.ema_decay_end - self.cfg.ema_decay)

    def loader(self, epoch: int, start_batch: int):
        """(images, skipped-image count) per batch of the epoch from ``start_batch`` on."""
        self.sampler.set_epoch(epoch, start_batch)
        if self.cfg.loader == "gpu":
            return pretraining_loader(self.dataset, self.cfg.seed, self.sampler, self.cfg.batch_size,
                                      self.cfg.num_workers, epoch, self.device)
        return torch.utils.data.DataLoader(
            SeededSamples(self.dataset, self.cfg.seed), batch_size=self.cfg.batch_size, sampler=self.sampler,
            num_workers=self.cfg.num_workers, pin_memory=self.device.type == "cuda", drop_last=True,
            generator=torch.Generator().manual_seed(epoch))  # so building a loader draws nothing from the global RNG

    def nan_advice(self) -> str:
        """What to do after a NaN (built when one happens: it looks at the run's checkpoints)."""
        return (f"The last good checkpoint is kept ({self.last_good()}); lower the lr (--blr), raise the warm-up "
                "(--warmup-epochs) or use --dtype bf16, then resume with the same command plus the change and "
                "--allow-recipe-change (the change is recorded in the run's recipe_changes.jsonl).")

    def train_step(self, micro_batches) -> tuple[float, float]:
        """One optimizer step over ``accum_iter`` micro-batches; returns (loss, grad norm)."""
        self.scheduler.step_update(self.step)
        total = torch.zeros((), device=self.device)
        for i, images in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            sync = self.net.no_sync() if (self.world > 1 and not last) else contextlib.nullcontext()
            with sync, autocast(self.device, self.amp):
                loss = self.net(images.to(self.device, non_blocking=True)).loss
            self.scaler.scale(loss / len(micro_batches)).backward()
            total += loss.detach() / len(micro_batches)
        total = all_reduce_mean(total, self.world)
        if not torch.isfinite(total):
            raise NonFiniteError(f"loss is {total.item()} at step {self.step}: stopping. {self.nan_advice()}")
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = optimizer_step(self.optimizer, self.scaler, params, self.cfg.clip_grad,
                              where=f"at step {self.step} (loss {total.item():.4g})", advice=self.nan_advice)
        self.model.update_ema(self.ema_decay(self.step // self.steps_per_epoch))
        self.step += 1
        return total.item(), norm.item()

    def fit(self) -> Path:
        cfg = self.cfg
        end = min(self.total_steps, cfg.max_steps or self.total_steps)
        if self.is_main:
            write_json_atomic(self.out / "config.json", dict(asdict(cfg), world_size=self.world,
                                                             effective_batch=self.eff_batch, lr=self.lr))
        watch = LossWatch(advice="Lower the lr (--blr) or raise the warm-up (--warmup-epochs).")
        self.model.train()
        with RunLog(self.out, rows="metrics", key="step", start=self.step, bar_start=self.step, total=end,
                    desc="pretrain", tb_prefix="train", text_log=True, main=self.is_main) as log:
            log.note(f"{'resumed at' if self.step else 'started'} step {self.step}: {json.dumps(asdict(cfg))}")
            while self.step < end:
                self.train_epoch(end, watch, log)
        encoder = None
        if self.is_main:
            encoder = self.export(final_loss=self.last_loss)
            logger.info(f"wrote {self.out / 'metrics.jsonl'}, checkpoints and the exported encoder {encoder}")
            release_lock(self.out)
        if self.world > 1:
            dist.barrier()
        return encoder

    def train_epoch(self, end: int, watch: LossWatch, log: RunLog):
        """The rest of the current epoch (from the step the run is at), or up to step ``end``."""
        cfg = self.cfg
        epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
        batches = iter(self.loader(epoch, in_epoch * cfg.accum_iter))
        for _ in range(in_epoch, self.steps_per_epoch):
            if self.step >= end:
                break
            tick = time.perf_counter()
            micro, skipped = [], 0
            for _ in range(cfg.accum_iter):
                images, n_skipped = next(batches)
                micro.append(images)
                skipped = max(skipped, int(torch.as_tensor(n_skipped).max()))
            loss, grad_norm = self.train_step(micro)
            self.last_loss = loss
            log.warn(watch.update(loss, f"at step {self.step}"))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            ips = self.eff_batch / (time.perf_counter() - tick)
            lr = self.optimizer.param_groups[0]["lr"]
            log.advance(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.0f}")
            watched = {}
            if self.monitor and self.is_main and Monitor.due(self.step, self.total_steps, cfg.monitor_every, end):
                watched = self.monitor.measure(self.model)
            if self.step % cfg.log_every == 0 or self.step == end or watched:
                row = step_row(self.step, epoch, {"loss": loss}, lr, self.eff_batch / ips, grad_norm=grad_norm,
                               img_per_s=ips, skipped_images=skipped, **watched)
                log.write(row, scalars=("loss", "lr", "grad_norm", "img_per_s", *watched),
                          text=f"step {self.step}/{end}  epoch {epoch}  loss {loss:.4f}  lr {lr:.3e}  "
                               f"grad_norm {grad_norm:.3f}  img/s {ips:.0f}  skipped {skipped}"
                               + "".join(f"  {k.removeprefix('monitor_')} {v}" for k, v in watched.items()))
            if self.step % cfg.save_every == 0 or self.step % self.steps_per_epoch == 0 or self.step == end:
                self.save()
