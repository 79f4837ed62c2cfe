"""SemAIM pretraining: single process, torchrun (DDP, multi-GPU / multi-node) or CPU.

    python -m semaim_core.pretrain --data /path/to/imagenet/train --output-dir runs/semaim_b --preset base
    torchrun --nproc_per_node 8 -m semaim_core.pretrain --data ... --output-dir ... --preset base

Every run directory holds ``config.json``, ``metrics.jsonl`` (one JSON object per logged step),
TensorBoard logs under ``tb/``, training checkpoints ``checkpoint-<step>.pth`` (atomic, the last
``--keep`` kept) and, at the end, the exported encoder ``encoder.pth``.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from timm.utils import random_seed
from tqdm import tqdm

from . import MODEL_SIZES, MODELS, build_model
from .checkpoint import FORMAT_TRAIN
from .data import MAX_IMAGE_PIXELS, ImageDataset, SeededSamples, find_images, pretrain_transform
from .distributed import all_reduce_mean, init_distributed
from .errors import SettingError, command
from .export import export_encoder, save_encoder
from .files import CheckpointError, load_file, save_atomic
from .optim import build_optimizer, build_scheduler
from .rundir import (
    RECIPE,
    RunDirError,
    canonical,
    drop_text_lines_after,
    file_list_digest,
    open_run,
    read_recipe,
    recipe_differences,
    release_lock,
    with_input_digests,
    write_json_atomic,
)
from .training import (
    AMP_DTYPES,
    LossWatch,
    MetricsLog,
    NonFiniteError,
    all_rng_states,
    autocast,
    grad_scaler,
    optimizer_step,
    require_format,
    restore,
    training_state,
)

# Paper recipe (ViT-B/16, released scripts): effective batch 2048, blr 2e-4, 30 warm-up epochs of
# 800 (the authors' main_pretrain.py default and README command; their 84.1), AdamW (0.9, 0.95),
# wd 0.05, clip 3, 224 crops, decoder depth = encoder depth, blurred pixel targets.
PRESETS = {
    **{size: dict(model=f"semaim_vit_{size}_patch16") for size in MODEL_SIZES},
    "base_400ep": dict(model="semaim_vit_base_patch16", epochs=400),  # the paper's shorter row (83.8)
    # a few minutes on a CPU with the bundled images
    "demo": dict(model="semaim_vit_tiny_patch16", img_size=96, depth=4, decoder_depth=4, batch_size=16,
                 accum_iter=1, epochs=6, warmup_epochs=1, blr=1.5e-3, dtype="fp32", num_workers=2, save_every=20,
                 log_every=1, device="cpu"),
}


@dataclass
class Config:
    data: str = ""
    output_dir: str = ""
    model: str = "semaim_vit_base_patch16"
    img_size: int = 224
    depth: int | None = None           # override the model size's encoder depth
    decoder_depth: int | None = None   # default: the encoder depth
    drop_path: float = 0.0
    order: str = "semantic"
    attention: str = "sorted"
    similarity_source: str | None = None  # default: "teacher" for dino/clip targets, else "online"
    similarity_precision: str = "fp32"  # "autocast": the similarity pass in the step's mixed precision
    ema_decay: float = 0.999           # EMA similarity encoder: decay ramps linearly from ema_decay
    ema_decay_end: float = 0.9999      # to ema_decay_end over the first ema_ramp_epochs epochs,
    ema_ramp_epochs: int = 100         # the authors' ramp (0.999 -> 0.9999 over 100 epochs)
    order_lambda: float = 1e-3         # the released code's value (the paper writes 0.01)
    order_smooth: bool = False         # the paper's 3x3 mean filter on S (not in the released code)
    num_centers: int = 2
    target: str = "pixel"
    pixel_blur: bool = True            # the authors' README: --gaussian_kernel_size 9 --gaussian_sigma 1
    teacher_weights: str | None = None
    teacher_input: str = "imagenet"    # "native": re-normalize the crop to the teacher's own statistics
    batch_size: int = 64               # per GPU and per micro-step
    accum_iter: int = 4                # effective batch = batch_size * accum_iter * world size
    epochs: int = 800
    warmup_epochs: int = 30
    blr: float = 2e-4                  # lr = blr * effective batch / 256
    lr: float | None = None            # absolute lr; overrides blr
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.95)
    clip_grad: float | None = 3.0
    dtype: str = "bf16"                # bf16 | fp16 | fp32 (autocast)
    compile: bool = False
    grad_checkpointing: bool = False   # recompute block activations in backward: less memory, same result
    float8: bool = False               # FP8 matmuls in the blocks (torchao; opt-in, not exact, part of the recipe)
    device: str = "cuda"
    num_workers: int = 8
    seed: int = 0
    save_every: int = 1000             # optimizer steps between checkpoints (and at every epoch end)
    keep: int = 3
    log_every: int = 20
    resume: str | None = "auto"        # "auto": the newest checkpoint in output_dir, if any; None: a new run
    overwrite: bool = False            # a new run may clear an output_dir that holds another run
    allow_recipe_change: bool = False  # resume with a changed recipe, recorded in recipe_changes.jsonl
    skip_unreadable: bool = False
    max_image_pixels: int = MAX_IMAGE_PIXELS  # larger images are unreadable (decompression-bomb guard; 0: none)
    max_steps: int | None = None       # stop early (tests, smoke runs); the schedule stays the full one

    def model_overrides(self) -> dict:
        o = dict(img_size=self.img_size, decoder_depth=self.decoder_depth, drop_path_rate=self.drop_path,
                 order=self.order, attention=self.attention, similarity_source=self.similarity_source,
                 similarity_precision=self.similarity_precision,
                 order_lambda=self.order_lambda, order_smooth=self.order_smooth, num_centers=self.num_centers,
                 target=self.target, pixel_blur=self.pixel_blur, grad_checkpointing=self.grad_checkpointing,
                 float8=self.float8)
        if self.depth is not None:
            o["depth"] = self.depth
        if self.target != "pixel":
            o["teacher"] = dict(weights=self.teacher_weights, input_norm=self.teacher_input)
        return o


# Settings that do not change what is trained (a resume may change them), and where to stop.
OPERATIONAL = ("output_dir", "resume", "overwrite", "allow_recipe_change", "num_workers", "log_every", "save_every",
               "keep", "compile", "grad_checkpointing", "device", "max_image_pixels")
STOPPING = ("max_steps",)


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
        recipe.update(world_size=self.world, model_overrides=model_overrides or {},
                      data_files=file_list_digest(files, Path(cfg.data)))
        recipe = with_input_digests(recipe, ["teacher_weights"])
        given = self.read_given_checkpoint(cfg.resume, recipe)  # --resume PATH: checked before the claim
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
            print(f"resumed from {path} at step {self.step}")

    def newest_readable_checkpoint(self):
        """(checkpoint, path) of the newest checkpoint in the run directory that loads; a torn or
        corrupt newer one is reported and passed over."""
        found = checkpoint_paths(self.out)
        for path in reversed(found):
            try:
                return load_file(path), path
            except CheckpointError as e:
                print(f"skipping unreadable checkpoint {path.name} ({e}); trying the one before it")
        if found:
            raise CheckpointError(f"none of the {len(found)} checkpoints in {self.out} can be read: "
                                  "remove them to start anew, or pass --resume PATH")
        return None, None

    def export(self, final_loss: float | None = None) -> Path:
        """encoder.pth and encoder.safetensors (the same weights and metadata) and the model card encoder.md."""
        from .rundir import suite_commit

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
        self.sampler.set_epoch(epoch, start_batch)
        return torch.utils.data.DataLoader(
            SeededSamples(self.dataset, self.cfg.seed), batch_size=self.cfg.batch_size, sampler=self.sampler,
            num_workers=self.cfg.num_workers, pin_memory=self.device.type == "cuda", drop_last=True,
            generator=torch.Generator().manual_seed(epoch))  # so building a loader draws nothing from the global RNG

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
        advice = (f"The last good checkpoint is kept ({self.last_good()}); lower the lr (--blr), raise the warm-up "
                  "(--warmup-epochs) or use --dtype bf16, then resume with the same command plus the change and "
                  "--allow-recipe-change (the change is recorded in the run's recipe_changes.jsonl).")
        if not torch.isfinite(total):
            raise NonFiniteError(f"loss is {total.item()} at step {self.step}: stopping. {advice}")
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = optimizer_step(self.optimizer, self.scaler, params, self.cfg.clip_grad,
                              where=f"at step {self.step} (loss {total.item():.4g})", advice=advice)
        self.model.update_ema(self.ema_decay(self.step // self.steps_per_epoch))
        self.step += 1
        return total.item(), norm.item()

    def fit(self) -> Path:
        cfg = self.cfg
        end = min(self.total_steps, cfg.max_steps or self.total_steps)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.out / "config.json", dict(asdict(cfg), world_size=self.world,
                                                             effective_batch=self.eff_batch, lr=self.lr))
            metrics = MetricsLog(self.out, "metrics", "step", self.step, "train")
            drop_text_lines_after(self.out / "log.txt", self.step)  # what a killed run logged past its checkpoint
            text_log = open(self.out / "log.txt", "a")  # the same rows as plain text, as MAE's log.txt
            text_log.write(f"{'resumed at' if self.step else 'started'} step {self.step}: {json.dumps(asdict(cfg))}\n")
            bar = tqdm(total=end, initial=self.step, desc="pretrain", dynamic_ncols=True)
        watch = LossWatch(advice="Lower the lr (--blr) or raise the warm-up (--warmup-epochs).")
        self.model.train()
        while self.step < end:
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
                    skipped = max(skipped, int(n_skipped.max()))
                loss, grad_norm = self.train_step(micro)
                self.last_loss = loss
                jump = watch.update(loss, f"at step {self.step}")
                if jump and self.is_main:
                    tqdm.write(jump, file=sys.stderr)
                    text_log.write(jump + "\n")
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                ips = self.eff_batch / (time.perf_counter() - tick)
                if self.is_main:
                    lr = self.optimizer.param_groups[0]["lr"]
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.0f}")
                    if self.step % cfg.log_every == 0 or self.step == end:
                        rec = dict(step=self.step, epoch=epoch, loss=loss, lr=lr, grad_norm=grad_norm, img_per_s=ips,
                                   skipped_images=skipped)
                        metrics.write(rec, scalars=("loss", "lr", "grad_norm", "img_per_s"))
                        text_log.write(f"step {self.step}/{end}  epoch {epoch}  loss {loss:.4f}  lr {lr:.3e}  "
                                       f"grad_norm {grad_norm:.3f}  img/s {ips:.0f}  skipped {skipped}\n")
                        text_log.flush()
                if self.step % cfg.save_every == 0 or self.step % self.steps_per_epoch == 0 or self.step == end:
                    self.save()
        encoder = None
        if self.is_main:
            bar.close()
            metrics.close()
            text_log.close()
            encoder = self.export(final_loss=self.last_loss)
            print(f"wrote {self.out / 'metrics.jsonl'}, checkpoints and the exported encoder {encoder}")
            release_lock(self.out)
        if self.world > 1:
            dist.barrier()
        return encoder


# ---------------------------------------------------------------------------- command line
HELP = dict(
    data="an ImageNet-style folder (train/<class>/*.JPEG) or any folder of images",
    output_dir="the run directory: config, metrics.jsonl, log.txt, tb/, checkpoints, encoder.pth",
    model="the encoder size", img_size="crop size", depth="override the size's encoder depth",
    decoder_depth="decoder blocks (must divide the depth; default: the depth)", drop_path="stochastic depth rate",
    order="autoregression order: raster (row-major), snake (the authors' 'raster'), stochastic, similarity, "
          "semantic (SemAIM), multi_center",
    attention="sorted (fast, default) or dense (explicit masks, the reference); the same function",
    similarity_source="where S comes from (default: online for pixels, teacher for dino/clip)",
    similarity_precision="fp32 (the authors', outside autocast) or autocast (faster; the center may move)",
    ema_decay="EMA similarity encoder: decay at epoch 0", ema_decay_end="... and after --ema-ramp-epochs",
    ema_ramp_epochs="epochs over which the EMA decay ramps linearly",
    order_lambda="tie-break scale within a distance shell (the released code: 1e-3; the paper: 0.01)",
    order_smooth="the paper's 3x3 mean filter on S before the argmax", num_centers="multi_center: at most this many",
    target="what is predicted: pixel (blurred, normalized patches), dino or clip teacher tokens",
    pixel_blur="blur the pixel target (9 x 9 Gaussian, sigma 1) before normalizing each patch, as the authors' "
               "README runs it; --no-pixel-blur: the paper's ablation without it",
    teacher_weights="local teacher weights file for dino/clip (README: accepted layouts)",
    teacher_input="imagenet (the authors': the ImageNet-normalized crop) or native (the teacher's statistics)",
    batch_size="images per process and micro-step", accum_iter="micro-steps per optimizer step",
    epochs="training epochs (the schedule's length)", warmup_epochs="linear warm-up epochs",
    blr="base lr: lr = blr x effective batch / 256", lr="absolute lr (overrides --blr)",
    min_lr="floor of the cosine schedule", weight_decay="AdamW weight decay (none on biases and norms)",
    betas="AdamW betas", clip_grad="gradient-norm clip (0 or unset: none)", dtype="autocast dtype of the step",
    compile="torch.compile the model",
    grad_checkpointing="recompute each block's activations in the backward pass (less memory, ~1/3 more compute, "
    "the same result)",
    float8="FP8 matmuls in the encoder and decoder blocks (torchao float8; H100-class GPUs, with --compile): "
    "faster, not exact; needs --similarity-precision autocast with the online similarity source",
    device="cuda or cpu", num_workers="data-loading processes per process",
    seed="seeds initialization, data order, augmentation and tie-breaks",
    save_every="optimizer steps between checkpoints (also at every epoch end)", keep="checkpoints kept",
    log_every="steps between metrics rows", resume="auto (the newest checkpoint here), none (a new run) or a PATH",
    overwrite="a new run may clear an output dir that holds another run",
    allow_recipe_change="resume although the recipe changed (e.g. a lower lr after a NaN); the changes are recorded "
    "in recipe_changes.jsonl",
    skip_unreadable="skip unreadable images (counted) instead of stopping",
    max_image_pixels="images with more pixels are unreadable (PIL's decompression-bomb limit; 0: no limit)",
    max_steps="stop after this many steps (the schedule stays the full one; a later start with a larger value resumes)")


def choices() -> dict:
    from .model import ATTENTION, SIMILARITY_PRECISIONS, SIMILARITY_SOURCES
    from .orders import ORDERS
    from .targets import TEACHER_INPUTS, TEACHERS

    return dict(model=sorted(MODELS), order=ORDERS, attention=ATTENTION, similarity_source=SIMILARITY_SOURCES,
                similarity_precision=SIMILARITY_PRECISIONS, target=("pixel", *TEACHERS), teacher_input=TEACHER_INPUTS,
                dtype=("bf16", "fp16", "fp32"))


def read_config_file(path: str) -> dict:
    """The settings of a ``--config`` JSON file; a key that is not a setting names the closest one."""
    try:
        values = json.loads(Path(path).read_text())
    except OSError as e:
        raise SettingError(f"--config {path}: {e.strerror}") from None
    except ValueError as e:
        raise SettingError(f"--config {path} is not valid JSON ({e})") from None
    if not isinstance(values, dict):
        raise SettingError(f"--config {path} holds a JSON {type(values).__name__}: write an object of settings, "
                           'e.g. {"blr": 1e-4}')
    known = [f.name for f in fields(Config)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f" (the settings: {', '.join(known)})"
            raise SettingError(f"--config {path}: '{key}' is not a setting{hint}")
    return values


def parse_args(argv=None) -> Config:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), help="start from a preset (flags given override it)")
    ap.add_argument("--config", help="a JSON file of settings (flags given override it)")
    allowed = choices()
    for f in fields(Config):
        flag, text = "--" + f.name.replace("_", "-"), f"{HELP[f.name]} (default: {f.default})"
        if f.type == "bool":
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif f.name == "betas":
            ap.add_argument(flag, type=float, nargs=2, default=None, help=text)
        else:
            conv = {"int": int, "float": float, "int | None": int, "float | None": float}.get(f.type, str)
            ap.add_argument(flag, type=conv, default=None, choices=allowed.get(f.name), help=text)
    args = ap.parse_args(argv)
    values = {}
    if args.preset:
        values.update(PRESETS[args.preset])
    if args.config:
        values.update(read_config_file(args.config))
    values.update({k: v for k, v in vars(args).items() if v is not None and k not in ("preset", "config")})
    if values.get("resume") in ("none", "no", ""):
        values["resume"] = None
    for key, options in allowed.items():  # presets and --config files are checked like flags
        if key in values and values[key] is not None and values[key] not in options:
            ap.error(f"unknown --{key.replace('_', '-')} {values[key]!r}: choose one of {', '.join(options)}")
    return Config(**values)


def main(argv=None):
    cfg = parse_args(argv)
    trainer = Trainer(cfg)
    trainer.fit()


cli = command(main)  # the console script (pyproject.toml): bad input as one line, no traceback

if __name__ == "__main__":
    cli()
