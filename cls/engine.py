"""The classification engine that fine-tuning, the linear and attentive probes and k-NN share
(MAE's engine_finetune): the command line, the run directory, the epoch loop with exact
epoch-level resume, evaluation and the metrics files. The step itself (AMP, clipping, non-finite
guard, RNG) is semaim_core.training's.

Every run directory gets ``log.jsonl`` (one JSON object per epoch), ``metrics.jsonl`` (one per step, the
schema every trainer writes: ``semaim_core.runlog.step_row``), TensorBoard events in
``tb/``, ``checkpoint.pth`` (atomic, the latest epoch) and ``cls_metrics.json`` (top-1 / top-5)."""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import accuracy, random_seed

from cls.data import check_layout, loader
from cls.robustness import check_eval_sets, score_eval_sets
from semaim_core.data import eval_transform
from semaim_core.distributed import all_reduce_mean, init_distributed
from semaim_core.errors import HelpFormatter, SettingError
from semaim_core.gpu_loader import LOADERS
from semaim_core.layouts import read_encoder
from semaim_core.optim import build_scheduler
from semaim_core.provenance import provenance
from semaim_core.provenance import write_metrics as write_record
from semaim_core.rundir import open_run, release_lock, with_input_digests
from semaim_core.runlog import RunLog, step_row
from semaim_core.safe_io import load_file, refuse_address, save_atomic
from semaim_core.training import (
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

FORMAT = "semaim-cls-train"
logger = logging.getLogger(__name__)


def base_parser(description: str, batch_size: int = 64, trains: bool = True,
                no_device_form: str | None = None) -> argparse.ArgumentParser:
    """The flags every cls entry point takes; ``trains``: also those of an epoch loop (k-NN has none).
    ``no_device_form``: why its training transform cannot run on the device (--loader gpu is refused)."""
    ap = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    ap.add_argument("--data", required=True, help="ImageFolder root with train/ and val/ (ImageNet layout)")
    ap.add_argument("--encoder", required=True,
                    help="an exported SemAIM encoder (or any checkpoint the converter reads)")
    ap.add_argument("--output-dir", required=True, help="the run directory (checkpoint, logs, cls_metrics.json)")
    ap.add_argument("--img-size", type=int, default=224, help="input size (the position table is resized)")
    ap.add_argument("--batch-size", type=int, default=batch_size, help="per process; effective = this x processes")
    ap.add_argument("--num-workers", type=int, default=8, help="data-loading worker processes")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    ap.add_argument("--loader", default="torch", type=loader_choice(no_device_form), metavar="{torch,gpu}",
                    help="torch: decode and augment in the worker processes; gpu: they read bytes, the device "
                         "decodes (nvJPEG) and crops: the same crops, pixels within the interpolation's tolerance "
                         "(docs/fidelity.md)" + (f"; not here: {no_device_form}" if no_device_form else ""))
    ap.add_argument("--fit-images", type=int, default=None,
                    help="a fit check: train on this many training images (spread over the classes) and score on "
                         "the same images; a working pipeline fits them")
    ap.add_argument("--overwrite", action="store_true",
                    help="clear an --output-dir that holds another run (or another encoder's result)")
    if not trains:
        return ap
    ap.add_argument("--seed", type=int, default=0, help="seeds the head, data order, augmentation and mixup")
    ap.add_argument("--eval-sets", nargs="+", default=[], metavar="NAME=PATH",
                    help="also score the trained classifier on these sets (imagenet-v2=DIR, imagenet-real=real.json, "
                         "imagenet-a=DIR, imagenet-r=DIR, imagenet-sketch=DIR; layouts: cls/robustness.py)")
    ap.add_argument("--stop-after-epochs", type=int, default=None,
                    help="stop (with a checkpoint) after this many epochs; a rerun resumes where it stopped")
    ap.add_argument("--save-every", type=int, default=1,
                    help="write checkpoint.pth every this many epochs (and always at the last one and at "
                         "--stop-after-epochs); a killed run resumes from the last one written")
    return ap


def loader_choice(no_device_form: str | None):
    """``--loader``'s type: one of LOADERS, and gpu only where the transforms have a device form."""
    def parse(value: str) -> str:
        if value not in LOADERS:
            raise argparse.ArgumentTypeError(f"{value!r}: choose from {', '.join(LOADERS)}")
        if value == "gpu" and no_device_form:
            raise argparse.ArgumentTypeError(f"gpu: {no_device_form}; use --loader torch")
        return value
    return parse


# Arguments that do not change the result (a rerun may change them).
OPERATIONAL = ("output_dir", "num_workers", "device", "overwrite", "stop_after_epochs", "save_every", "eval_sets")


def start(args, check_encoder=None) -> bool:
    """Check the inputs, seed everything (before any weight is drawn) and claim the output
    directory for this recipe; True when it continues a run with the same recipe.

    The data layout and the encoder are checked before the directory is claimed, so a bad input
    leaves nothing behind; ``check_encoder(meta)`` adds an entry point's own check of the encoder
    (its depth, say)."""
    rank = int(os.environ.get("RANK", 0))
    for name, value in vars(args).items():  # nan or inf given for any number would end in a NaN loss, or worse
        if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
            raise SettingError(f"--{name.replace('_', '-')} {value}: not a finite number")
    refuse_address(args.encoder, "--encoder")  # before resolve() makes it a local path that does not exist
    args.data, args.encoder = str(Path(args.data).resolve()), str(Path(args.encoder).resolve())
    check_layout(args.data, getattr(args, "fit_images", None))
    if getattr(args, "eval_sets", None):
        check_eval_sets(args)  # a wrong path or layout is named now, not after training
    _, meta = read_encoder(args.encoder)
    if check_encoder:
        check_encoder(meta)
    random_seed(getattr(args, "seed", 0), rank)  # torch, numpy (timm's mixup draws from it) and random
    if rank != 0:
        return (Path(args.output_dir) / "checkpoint.pth").is_file()
    recipe = {k: v for k, v in vars(args).items() if k not in OPERATIONAL}
    if recipe.get("loader") == "torch":  # the default loader, as recipes written before --loader existed
        del recipe["loader"]
    return open_run(args.output_dir, with_input_digests(recipe, ["encoder"]), overwrite=args.overwrite)


@torch.no_grad()
def evaluate(model, data, device, world) -> dict:
    """Top-1 and top-5 (%). A model with several heads side by side (a hyper-parameter grid) returns
    (heads, batch, classes): each head is scored, top1/top5 are the best head's by top-1, as a grid
    search reports, and ``head_top1`` lists every head's."""
    model.eval()
    totals, grid = None, False  # per head: top-1 hits, top-5 hits, count
    for images, target in data:
        images, target = images.to(device), target.to(device)
        out = model(images)
        grid = out.dim() == 3
        heads = out if grid else out[None]
        k = min(5, heads.shape[-1])
        n = target.shape[0]
        hits = torch.tensor([[*(float(a) * n / 100 for a in accuracy(h, target, topk=(1, k))), n] for h in heads],
                            device=device)
        totals = hits if totals is None else totals + hits
    totals = all_reduce_mean(totals, world) * world
    top1, top5 = (100 * totals[:, i] / totals[:, 2] for i in (0, 1))
    best = int(top1.argmax())
    result = dict(top1=round(float(top1[best]), 3), top5=round(float(top5[best]), 3))
    if grid:
        result.update(head_top1=[round(float(t), 3) for t in top1], best_head=best)
    return result


def mixup_and_criterion(args, num_classes: int):
    """timm's Mixup/CutMix with its soft-target loss, or label smoothing alone when both are off
    (``--mixup``, ``--cutmix``, ``--smoothing``): fine-tuning's and the attentive probe's."""
    if args.mixup > 0 or args.cutmix > 0:
        return (Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, label_smoothing=args.smoothing,
                      num_classes=num_classes), SoftTargetCrossEntropy())
    return None, LabelSmoothingCrossEntropy(args.smoothing)


def majority_top1(train_set, val_set) -> float:
    """Top-1 of always answering the most frequent training class: the score a classifier that
    learned nothing gets, printed beside every top-1."""
    counts = torch.bincount(torch.tensor(train_set.targets), minlength=len(train_set.classes))
    return round(100 * sum(t == int(counts.argmax()) for t in val_set.targets) / len(val_set), 3)


def scored_folder(args) -> str:
    """The folder a run scores on: val/, or train/ for a fit check (it scores the images it trained on)."""
    return f"{args.data}/{'train' if getattr(args, 'fit_images', None) else 'val'}"


def write_metrics(args, record: dict, epoch: int | None, images: int) -> Path:
    """``cls_metrics.json`` with its provenance: the scored encoder (path and sha256), the epoch,
    the evaluation set and its size, the recipe and the suite's commit."""
    record["provenance"] = provenance(
        args.encoder, run=str(Path(args.output_dir).resolve()), epoch=epoch,
        dataset=str(Path(scored_folder(args)).resolve()), images=images,
        config={k: v for k, v in vars(args).items() if k not in OPERATIONAL})
    return write_record(Path(args.output_dir) / "cls_metrics.json", record, overwrite=True)


class EpochTrainer:
    """The loop fine-tuning and the probes share: per-iteration lr schedule (linear warm-up, cosine
    to ``args.min_lr``, built from the loader's length), autocast, NaN stop, evaluation and an atomic
    checkpoint after every epoch, exact resume at epoch starts."""

    def __init__(self, args, model, train_set, val_set, optimizer, criterion, mixup=None, ema=None,
                 clip_groups=None):
        """``optimizer``: its lr already scaled by the effective batch (``effective_batch(args)``).
        ``clip_groups``: parameter lists whose gradients are clipped each on its own (heads that
        train side by side); by default every trained parameter is clipped together."""
        self.args, self.mixup, self.ema, self.clip_groups = args, mixup, ema, clip_groups
        self.rank, self.world, self.device = init_distributed(args.device)
        self.out = Path(args.output_dir)
        self.model = model.to(self.device)
        self.net = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        shared = dict(batch_size=args.batch_size, workers=args.num_workers, world=self.world, rank=self.rank,
                      seed=args.seed, kind=args.loader, device=self.device)
        self.train_set, self.val_set = train_set, val_set
        self.train_loader = loader(train_set, shuffle=True, drop_last=True, **shared)
        self.val_loader = loader(val_set, shuffle=False, drop_last=False, **shared)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise SettingError(f"{len(train_set)} training images are fewer than one batch of {args.batch_size} "
                               f"per process x {self.world} processes: lower --batch-size")
        self.optimizer, self.criterion = optimizer, criterion
        self.scheduler = build_scheduler(optimizer, args.epochs * self.steps_per_epoch,
                                         args.warmup_epochs * self.steps_per_epoch, getattr(args, "min_lr", 0.0))
        self.amp = AMP_DTYPES[args.dtype]
        self.scaler = grad_scaler(self.device, self.amp)
        self.epoch, self.best = 0, dict(top1=-1.0, top5=-1.0)
        self.watch = LossWatch(advice="Lower the lr (--blr, or --lr-grid) or raise the warm-up (--warmup-epochs).")
        self.resume()

    def state(self, rng: list[dict] | None = None):
        return training_state(FORMAT, self.model, self.optimizer, self.scaler, rng, epoch=self.epoch, best=self.best,
                              ema=self.ema.state_dict() if self.ema else None)

    def resume(self):
        path = self.out / "checkpoint.pth"
        if not path.is_file():
            return
        ckpt = require_format(load_file(path), path, FORMAT, "a cls training checkpoint", "use another --output-dir")
        restore(ckpt, self.model, self.optimizer, self.scaler)
        if self.ema and ckpt["ema"]:
            self.ema.load_state_dict(ckpt["ema"])
        self.epoch, self.best = ckpt["epoch"], ckpt["best"]
        if self.rank == 0:
            logger.info(f"resumed from {path} at epoch {self.epoch}")

    def train_epoch(self, log: RunLog) -> float:
        self.net.train()
        self.train_loader.sampler.set_epoch(self.epoch)
        n = self.steps_per_epoch
        total = torch.zeros((), device=self.device)
        tick = time.time()
        for i, (images, target) in enumerate(self.train_loader):
            self.scheduler.step_update(self.epoch * n + i)
            images, target = images.to(self.device, non_blocking=True), target.to(self.device, non_blocking=True)
            if self.mixup is not None:
                images, target = self.mixup(images, target)
            with autocast(self.device, self.amp):
                loss = self.criterion(self.net(images), target)
            kept = f"the last good checkpoint ({self.out / 'checkpoint.pth'}) is kept"
            if not math.isfinite(loss.item()):
                raise NonFiniteError(f"loss is {loss.item()} in epoch {self.epoch}, step {i}: stopping; {kept}")
            self.scaler.scale(loss).backward()
            params = self.clip_groups or [p for p in self.model.parameters() if p.grad is not None]
            optimizer_step(self.optimizer, self.scaler, params, self.args.clip_grad,
                           where=f"in epoch {self.epoch}, step {i}", advice=kept)
            if self.ema is not None:
                self.ema.update(self.model)
            total += loss.detach()
            log.warn(self.watch.update(loss.item(), f"in epoch {self.epoch}, step {i}"))
            lr = self.optimizer.param_groups[-1]["lr"]
            log.advance(epoch=self.epoch, loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
            log.step(step_row(self.epoch * n + i + 1, self.epoch, {"loss": loss.item()}, lr, time.time() - tick))
            tick = time.time()
        return float(all_reduce_mean(total / n, self.world))

    def fit(self, mode: str, **extra) -> dict:
        """Train to the last epoch (or --stop-after-epochs), scoring each; the result, with ``extra``
        (what an entry point adds: the attentive probe's grid), goes to cls_metrics.json."""
        metrics = None
        end = min(self.args.epochs, self.args.stop_after_epochs or self.args.epochs)
        n = self.steps_per_epoch
        with RunLog(self.out, rows="log", key="epoch", start=self.epoch, bar_start=self.epoch * n, total=end * n,
                    desc=mode, tb_prefix="cls", step_rows=True, main=self.rank == 0) as log:
            while self.epoch < end:
                tick = time.time()
                loss = self.train_epoch(log)
                metrics = evaluate(self.model, self.val_loader, self.device, self.world)
                if self.ema is not None:
                    ema = evaluate(self.ema.module, self.val_loader, self.device, self.world)
                    metrics.update({f"ema_{k}": v for k, v in ema.items()})
                self.epoch += 1
                if metrics["top1"] > self.best["top1"]:
                    self.best = dict(top1=metrics["top1"], top5=metrics["top5"], epoch=self.epoch)
                save = self.epoch % self.args.save_every == 0 or self.epoch == end
                rng = all_rng_states() if save else None  # every rank takes part; rank 0 writes them all
                if self.rank == 0:
                    row = dict(epoch=self.epoch, train_loss=loss, seconds=round(time.time() - tick, 1), **metrics)
                    log.write(row)
                    if save:
                        save_atomic(self.state(rng), self.out / "checkpoint.pth")
                    logger.info(json.dumps(row))
        if metrics is None:  # resumed a run that had reached its end: score the weights it ended with
            metrics = evaluate(self.model, self.val_loader, self.device, self.world)
        result = dict(task="cls", mode=mode, epochs=self.epoch, top1=metrics["top1"], top5=metrics["top5"],
                      best=self.best,
                      majority_top1=majority_top1(self.train_set, self.val_set),
                      encoder=str(self.args.encoder), data=str(self.args.data))
        if "head_top1" in metrics:
            result.update(head_top1=metrics["head_top1"], best_head=metrics["best_head"])
        result.update(extra)
        if self.args.eval_sets:
            result["eval_sets"] = score_eval_sets(self.model, self.args, self.train_set.classes,
                                                  eval_transform(self.args.img_size), self.device, self.world,
                                                  self.rank, head=metrics.get("best_head"))
            for scored in result["eval_sets"].values() if self.rank == 0 else ():
                logger.info(f"{mode} top-1 {scored['top1']:.2f} on {scored['images']} images of {scored['dataset']} "
                            f"({scored['path']})")
        if self.rank == 0:
            logger.info(f"{mode} top-1 {result['top1']:.2f} on {len(self.val_set)} images of "
                        f"{scored_folder(self.args)} (always answering the most frequent class: "
                        f"{result['majority_top1']:.2f})")
            logger.info(f"wrote {write_metrics(self.args, result, self.epoch, len(self.val_set))}")
            release_lock(self.out)
        return result
