#!/usr/bin/env python
"""ViTDet Mask R-CNN with a SemAIM backbone on detectron2 (LazyConfig).

    python -m det.train_net --config det/configs/vitdet_semaim.py --num-gpus 8 \
        train.init_checkpoint=runs/semaim_b/encoder.pth
    python -m det.train_net --config det/configs/vitdet_semaim.py --eval-only \
        train.init_checkpoint=output/.../model_final.pth
    python -m det.train_net --config ... --resume          # continue from the last checkpoint in train.output_dir

Multi-node: --num-machines N --machine-rank i --dist-url tcp://host0:port, as in detectron2.
Metrics: metrics.json (JSON lines) and TensorBoard events in train.output_dir; each evaluation
writes det_metrics.json (box and mask AP, per-class AP) there.
"""
import difflib
import logging
import re
import sys
from pathlib import Path

import det  # noqa: F401  (first: it quiets detectron2's import-time warning)

# isort: split
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.solver import LRMultiplier
from detectron2.utils import comm
from detectron2.utils.events import EventWriter, get_event_storage
from detectron2.utils.logger import setup_logger
from omegaconf import OmegaConf

from det.checkpoint import AtomicCheckpointer, ExactResumeHook, load_backbone, load_detector
from det.data import check_datasets, register_tiny_coco
from det.evaluation import check_writable, write_metrics
from semaim_core.configs import check_override_kind, resolve_config
from semaim_core.errors import SettingError, UnknownKeyError, check_all, command
from semaim_core.rundir import drop_rows_after, flatten, open_run, release_lock, with_input_digests
from semaim_core.runlog import StepRows, step_row
from semaim_core.safe_io import check_file
from semaim_core.training import rng_state, set_rng_state

CONFIGS = Path(__file__).resolve().parent / "configs"

# Settings that do not change what is trained (a resume may change them), and where to stop.
OPERATIONAL = ("train.output_dir", "train.eval_period", "train.log_period", "train.checkpointer", "train.device",
               "train.ddp", "dataloader.evaluator")
STOPPING = ("train.stop_after_iter",)  # train.max_iter sets the lr schedule: part of the recipe

logger = logging.getLogger("detectron2.det")  # a child: detectron2's handlers print it and write it to log.txt
_MISSING = object()


def ddp_options(cfg) -> dict:
    """detectron2 gives DDP device_ids=[local rank], which CPU modules refuse: on the CPU (gloo,
    e.g. --num-gpus 2 for testing) the model is replicated without device ids."""
    options = dict(cfg.train.ddp)
    if str(cfg.train.device).startswith("cpu"):
        options["device_ids"] = None
    return options


def recipe(cfg) -> dict:
    """The LazyConfig, setting by setting, without the operational ones (see ``OPERATIONAL``)."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=False))
    return {k: v for k, v in flat.items() if not k.startswith(OPERATIONAL) and not k.endswith("num_workers")}


def stop_iter(cfg) -> int:
    """Where this start stops: ``train.stop_after_iter`` if set (the schedule stays ``train.max_iter``'s;
    detectron2 writes model_final.pth there too, which the resumed run replaces), else the end."""
    stop = cfg.train.get("stop_after_iter") or cfg.train.max_iter
    if not 0 < stop <= cfg.train.max_iter:
        raise ValueError(f"train.stop_after_iter={stop} must lie in 1..train.max_iter ({cfg.train.max_iter})")
    return stop


def quote_non_ascii(opt: str) -> str:
    """``key=value`` with a value that hydra's override grammar reads only quoted (a path such as
    /data/données: its lexer takes ASCII alone) quoted, so that it stays the string it was."""
    key, sep, value = opt.partition("=")
    if sep and not value.isascii() and value[:1] not in "'\"":
        value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return key + sep + value


def apply_overrides(cfg, opts):
    """detectron2's overrides, checked: detectron2 adds an unknown key silently (``train.max_iters=2``
    trains the default length), so every key must exist unless it asks to be added with
    ``+key=value``, and a value must be of the kind it replaces (``check_override_kind``)."""
    known = list(flatten(OmegaConf.to_container(cfg, resolve=False)))
    before = {}
    for opt in opts:
        key = opt.split("=", 1)[0]
        if key.startswith("+"):
            continue
        before[key] = OmegaConf.select(cfg, key, default=_MISSING)
        if before[key] is _MISSING:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else " (prefix it with + to add a new key)"
            raise UnknownKeyError(f"unknown config key '{key}' in override '{opt}'{hint}")
    cfg = LazyConfig.apply_overrides(cfg, [quote_non_ascii(opt) for opt in opts])
    for key, old in before.items():
        check_override_kind(key, old, OmegaConf.select(cfg, key))
    return cfg


def do_test(cfg, model, iteration: int | None, checkpoint=None, overwrite: bool = False):
    """Score ``model`` on the test set into det_metrics.json; ``iteration``: the iterations it trained."""
    check_datasets(cfg.dataloader.test.dataset.names)
    if comm.is_main_process():
        check_writable(cfg.train.output_dir, checkpoint, overwrite)
    loader = instantiate(cfg.dataloader.test)
    results = inference_on_dataset(model, loader, instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(results)
        path = write_metrics(results, cfg.train.output_dir, iteration, cfg.dataloader.test.dataset.names,
                             checkpoint=checkpoint, images=len(loader.dataset), config=cfg.get("_config_file"),
                             overwrite=overwrite)
        logger.info(f"wrote {path}")
    return results


def do_train(args, cfg):
    check_datasets(cfg.dataloader.train.dataset.names)
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)

    model = create_ddp_model(model, **ddp_options(cfg))
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optimizer)
    checkpointer = AtomicCheckpointer(model, cfg.train.output_dir, trainer=trainer)

    def evaluate():  # on a copy of the RNG: when and how often it runs does not change training
        state = rng_state()
        try:  # iterations done: trainer.iter + 1 during training, trainer.iter (= the stop) once it ended
            return do_test(cfg, model, min(trainer.iter + 1, trainer.max_iter), overwrite=args.overwrite)
        finally:
            set_rng_state(state)

    trainer.register_hooks([
        hooks.IterationTimer(),
        # the schedule spans train.max_iter, wherever this start stops (detectron2 would use the stop)
        hooks.LRScheduler(scheduler=LRMultiplier(optimizer, instantiate(cfg.lr_multiplier), cfg.train.max_iter)),
        ExactResumeHook(),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        # train.eval_period=0: no evaluation at all (detectron2 would still evaluate after the last iteration)
        hooks.EvalHook(cfg.train.eval_period, evaluate) if cfg.train.eval_period > 0 else None,
    ])
    if args.resume and checkpointer.has_checkpoint():
        # a full training checkpoint of this run: model, optimizer, scheduler, iteration and RNG (strict)
        checkpointer.resume_or_load(checkpointer.last_checkpoint(), resume=True)
        start_iter = trainer.iter + 1
    else:
        if cfg.train.init_checkpoint != "none":
            load_backbone(model, cfg.train.init_checkpoint)
        start_iter = 0
    if comm.is_main_process():  # rows a killed run logged past its checkpoint, before the writer opens the file
        drop_rows_after(Path(cfg.train.output_dir) / "metrics.json", "iteration", start_iter - 1)
        writers = [*default_writers(cfg.train.output_dir, cfg.train.max_iter),
                   StepRowsWriter(cfg.train.output_dir, start_iter)]
        trainer.register_hooks([hooks.PeriodicWriter(writers, period=cfg.train.log_period)])
    trainer.train(start_iter, stop_iter(cfg))
    if comm.is_main_process():
        release_lock(cfg.train.output_dir)


class StepRowsWriter(EventWriter):
    """metrics.jsonl in the suite's one schema (``semaim_core.runlog.step_row``) beside detectron2's
    metrics.json: at each write, the latest loss terms, lr and step time (detectron2's ``time``,
    once its timer has warmed up) of the iteration just done."""

    def __init__(self, output_dir: str, start_iter: int):
        self.rows, self.last = StepRows(output_dir, start_iter), start_iter

    def write(self):
        latest = get_event_storage().latest()
        step = latest["total_loss"][1] + 1  # the iteration the losses are of (the writer also runs after training)
        if step <= self.last:
            return
        values = {k: v for k, (v, _) in latest.items()}
        losses = {"loss": values["total_loss"], **{k: v for k, v in values.items() if k.startswith("loss_")}}
        self.rows.write(step_row(step, None, losses, values["lr"], values.get("time")))
        self.last = step

    def close(self):
        self.rows.close()


class PlainFormatter(logging.Formatter):
    """A handler's own format, without terminal colour codes (detectron2 colours the config it logs)."""

    ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record):
        return self.ANSI.sub("", self.inner.format(record))


def plain_log_file(logger: logging.Logger):
    """The log file (log.txt) in plain text; the terminal keeps its colours."""
    for handler in logger.handlers:
        stream = getattr(handler, "stream", None)
        if stream is not None and stream not in (sys.stdout, sys.stderr) and handler.formatter:
            handler.setFormatter(PlainFormatter(handler.formatter))


def check_inputs(cfg, args):
    """Every dataset and checkpoint this start reads, checked before the output dir is claimed; all
    that are missing are named at once."""
    resuming = args.resume and (Path(cfg.train.output_dir) / "last_checkpoint").is_file()
    evaluates = args.eval_only or cfg.train.eval_period > 0
    checks = [] if args.eval_only else [lambda: check_datasets(cfg.dataloader.train.dataset.names)]
    if evaluates:
        checks.append(lambda: check_datasets(cfg.dataloader.test.dataset.names))
    if not resuming:
        checks.append(lambda: check_init_checkpoint(cfg.train.init_checkpoint, args.eval_only))
    check_all(checks)


def check_init_checkpoint(path: str, eval_only: bool):
    if eval_only:
        check_file(path, "train.init_checkpoint (the detector to evaluate)")
    elif not path:
        raise SettingError("train.init_checkpoint is empty: name an exported SemAIM encoder "
                           "(tools/convert_checkpoint.py) or pass train.init_checkpoint=none for random init")
    elif path != "none":
        check_file(path, "train.init_checkpoint")


def main(args):
    register_tiny_coco()
    args.config_file = resolve_config(args.config_file, CONFIGS)
    cfg = LazyConfig.load(args.config_file)
    cfg = apply_overrides(cfg, args.opts)
    check_inputs(cfg, args)
    if not args.eval_only and comm.is_main_process():  # one run per output dir; a resume keeps the recipe
        open_run(cfg.train.output_dir, with_input_digests(recipe(cfg), ["train.init_checkpoint"]),
                 overwrite=args.overwrite, fresh=not args.resume, stopping=STOPPING)
    comm.synchronize()  # the other ranks write their logs only once rank 0 has claimed the directory
    cfg._config_file = args.config_file
    # detectron2's logger, made as default_setup makes it (setup_logger caches it by its arguments),
    # so that its log file is plain text before default_setup logs the config in colour
    plain_log_file(setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank()))
    default_setup(cfg, args)
    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        model = create_ddp_model(model, **ddp_options(cfg))
        trained = load_detector(model, cfg.train.init_checkpoint)["iteration"]
        return do_test(cfg, model, trained, checkpoint=cfg.train.init_checkpoint, overwrite=args.overwrite)
    do_train(args, cfg)


def parse_args(argv=None):
    parser = default_argument_parser()
    parser.add_argument("--config", dest="config_file",
                        help="the LazyConfig (same as --config-file): a path, or a name in det/configs/")
    parser.add_argument("--overwrite", action="store_true",
                        help="training: clear an output dir that holds another run; "
                             "--eval-only: replace another result")
    return parser.parse_args(argv)


def cli(argv=None):
    """The command line: detectron2's launcher starts ``--num-gpus`` processes on this machine."""
    args = parse_args(argv)
    launch(command(main), args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    cli()
