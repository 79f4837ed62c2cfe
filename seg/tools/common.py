"""What seg/tools/train.py and test.py share: argument parsing, config loading, the runner."""
from __future__ import annotations

import argparse
import difflib
import importlib.util
import inspect
import os
import os.path as osp
import time
from pathlib import Path

from mmengine.config import Config, DictAction
from mmengine.hooks import CheckpointHook
from mmengine.runner import Runner
from mmseg.registry import HOOKS, RUNNERS

import seg  # noqa: F401  (mmcv-lite compatibility + registration)
from seg.data import check_dataset
from semaim_core.configs import check_override_kind, resolve_config
from semaim_core.errors import HelpFormatter, SettingError, UnknownKeyError, check_all
from semaim_core.rundir import flatten
from semaim_core.safe_io import check_file


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    ap.add_argument("config", help="an mmseg config: a path, or a name in seg/configs/ (e.g. upernet_semaim.py)")
    ap.add_argument("--work-dir", help="where logs, checkpoints and seg_metrics.json (depth_metrics.json) go")
    ap.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config values: key=value")
    ap.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                    help="'pytorch' under torchrun for multi-GPU / multi-node")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=0)
    ap.add_argument("--vis-backend", nargs="+", default=[], choices=sorted(EXTRA_VIS_BACKENDS), metavar="NAME",
                    help="also log to Weights & Biases (wandb) and/or MLflow (mlflow) through mmengine's vis backends "
                         "(the package must be installed; WANDB_PROJECT, MLFLOW_TRACKING_URI set where to); "
                         "TensorBoard, metrics.jsonl and mmengine's JSON log are always written")
    ap.add_argument("--overwrite", action="store_true",
                    help="train: clear a work dir that holds another run; test: replace another result")
    return ap


# the suite's evaluators and the file each writes its result to, in the work dir
METRIC_FILES = {"SemAIMIoUMetric": "seg_metrics.json", "SemAIMDepthMetric": "depth_metrics.json"}
# --vis-backend: mmengine's backends for the services users log to (off unless asked for)
EXTRA_VIS_BACKENDS = {"wandb": "WandbVisBackend", "mlflow": "MLflowVisBackend"}

# Settings that do not change what is trained (a resume may change them), and where to stop.
OPERATIONAL = ("work_dir", "launcher", "resume", "load_from", "default_hooks", "log_processor", "log_level",
               "visualizer", "experiment_name", "env_cfg", "train_cfg.val_interval", "val_evaluator", "test_evaluator")
STOPPING = ("train_cfg.max_iters",)


def recipe(cfg: Config) -> dict:
    """The config, setting by setting, without the operational ones (see ``OPERATIONAL``)."""
    flat = flatten(cfg.to_dict())
    return {k: v for k, v in flat.items()
            if not k.startswith(OPERATIONAL) and not k.endswith(("num_workers", "persistent_workers"))}


def check_overrides(cfg: Config, options: dict):
    """mmengine adds any key given to --cfg-options (``train_cfg.max_iter=3`` trains the default
    length): every key's parents must exist, and a new last key must not be a near miss of an
    existing one; otherwise an error names the closest key. A value must be of the kind it replaces."""
    for key in options:
        node, path = cfg, []
        for part in key.split("."):
            children = [str(i) for i in range(len(node))] if isinstance(node, (list, tuple)) else list(node)
            last = len(path) == key.count(".")
            close = difflib.get_close_matches(part, children, n=1, cutoff=0.8 if last else 0.6)
            if part not in children and (not last or close):
                where = ".".join(path) or "the config"
                hint = f"; did you mean '{'.'.join([*path, close[0]])}'?" if close else ""
                raise UnknownKeyError(f"unknown key '{key}' in --cfg-options: {where} has no '{part}'{hint}")
            if part not in children:
                break  # a new leaf under an existing parent (e.g. dataset.indices)
            node = node[int(part)] if isinstance(node, (list, tuple)) else node[part]
            path.append(part)
            if not isinstance(node, (dict, list, tuple)) and not last:
                raise UnknownKeyError(f"unknown key '{key}' in --cfg-options: {'.'.join(path)} is a value, not a "
                                      "section")
            if last:
                check_override_kind(key, node, options[key])


def load_config(args) -> Config:
    args.config = resolve_config(args.config, Path(__file__).resolve().parents[1] / "configs")
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        check_overrides(cfg, args.cfg_options)
        cfg.merge_from_dict(args.cfg_options)
    check_hooks(cfg)
    add_vis_backends(cfg, args.vis_backend)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or osp.join(
        "./work_dirs", osp.splitext(osp.basename(args.config))[0])
    checkpoint = getattr(args, "checkpoint", None)  # test.py scores a file; train.py its own model
    for key in ("val_evaluator", "test_evaluator"):
        name = METRIC_FILES.get(cfg.get(key, {}).get("type"))
        if name:
            loader = cfg.get(key.replace("evaluator", "dataloader"), {}).get("dataset", {})
            cfg[key]["json_file"] = osp.join(cfg.work_dir, name)
            cfg[key]["overwrite"] = bool(getattr(args, "overwrite", False))
            backbone = backbone_cfg(cfg)
            cfg[key]["protocol"] = dict(protocol="linear" if backbone.get("frozen") else "finetune",
                                        blocks=list(backbone.get("out_indices", [])))
            cfg[key]["provenance"] = dict(checkpoint=checkpoint, run=osp.abspath(cfg.work_dir), config=args.config,
                                          dataset=f"{loader.get('type')} {loader.get('data_root')} "
                                                  f"{loader.get('data_prefix', {}).get('img_path', '')}".strip())
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    if cfg.get("visualizer"):  # mmengine keeps one visualizer per name per process: a runner gets its own
        cfg.visualizer.name = f"visualizer_{os.getpid()}_{time.time_ns()}"
    # and one logger per experiment name, which it makes of the config's name and the second: a
    # second runner started within that second (train then test) would log into the first's file
    cfg.experiment_name = f"{Path(cfg.filename).stem}_{os.getpid()}_{time.time_ns()}"
    return cfg


def add_vis_backends(cfg: Config, names: list[str]):
    """The backends of ``--vis-backend`` beside the config's own. mmengine imports a service's
    package when it first logs, after training has started: a missing one is named now instead."""
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise SettingError(f"--vis-backend {name}: the {name} package is not installed (pip install {name})")
        if not cfg.get("visualizer"):
            raise SettingError(f"--vis-backend {name}: the config has no visualizer to add it to")
        cfg.visualizer.setdefault("vis_backends", []).append(dict(type=EXTRA_VIS_BACKENDS[name]))


def check_hooks(cfg: Config):
    """Every setting of every hook is one its class takes. mmengine's CheckpointHook passes settings
    it does not know on to ``Runner.save_checkpoint``, so a typo there (``max_keep_ckpt``) would stop
    the run at its first checkpoint, after hours of training: it is named before training instead."""
    hooks = [(f"default_hooks.{name}", h) for name, h in (cfg.get("default_hooks") or {}).items() if h]
    hooks += [(f"custom_hooks.{i}", h) for i, h in enumerate(cfg.get("custom_hooks") or [])]
    for where, hook in hooks:
        kind = hook.get("type")
        cls = HOOKS.get(kind) if isinstance(kind, str) else kind
        if cls is None:
            raise UnknownKeyError(f"{where}.type={kind!r}: no such hook is registered")
        params = inspect.signature(cls.__init__).parameters
        takes = set(params) - {"self"}
        if issubclass(cls, CheckpointHook):  # the rest goes to save_checkpoint
            takes |= set(inspect.signature(Runner.save_checkpoint).parameters)
        elif any(p.kind == p.VAR_KEYWORD for p in params.values()):
            continue
        for key in sorted(k for k in set(hook) - takes - {"type", "priority"} if not k.startswith("_")):
            close = difflib.get_close_matches(key, sorted(takes), n=1)
            hint = f"; did you mean '{where}.{close[0]}'?" if close else f" (it takes: {', '.join(sorted(takes))})"
            raise UnknownKeyError(f"{where}.{key}: {cls.__name__} has no setting '{key}'{hint}")


def backbone_cfg(cfg: Config) -> dict:
    """The backbone's settings, also under a model wrapper (``model.module``, as the TTA model has them)."""
    return (cfg.model.get("module") or cfg.model).get("backbone", {})


def check_inputs(cfg: Config, splits=("train", "val", "test")):
    """The datasets of ``splits`` and the backbone's checkpoint, checked before the work dir is
    claimed; all that are missing are named at once."""
    loaders = [cfg.get(f"{split}_dataloader") for split in splits]
    checks = [lambda d=loader["dataset"]: check_dataset(d) for loader in loaders if loader]
    backbone = backbone_cfg(cfg)
    if backbone.get("checkpoint"):
        checks.append(lambda: check_file(backbone["checkpoint"], "model.backbone.checkpoint"))
    check_all(checks)


def build_runner(cfg: Config, splits=("train", "val", "test")):
    check_inputs(cfg, splits)
    return RUNNERS.build(cfg)
