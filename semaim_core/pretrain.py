"""SemAIM pretraining from the command line: single process, torchrun (DDP, multi-GPU / multi-node)
or CPU. The settings are ``recipe.Config``'s (a flag each, its help from the field), a preset and a
``--config`` JSON file fill them first; the run is ``trainer.Trainer``'s.

    python -m semaim_core.pretrain --data /path/to/imagenet/train --output-dir runs/semaim_b --preset base
    torchrun --nproc_per_node 8 -m semaim_core.pretrain --data ... --output-dir ... --preset base
"""
from __future__ import annotations

import argparse
import difflib
import json
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from .errors import SettingError, command
from .recipe import PRESETS, Config, choices
from .trainer import Trainer


def add_arguments(ap: argparse.ArgumentParser, cls, allowed: dict) -> None:
    """A flag per field of the dataclass ``cls``, typed by its annotation (a bool as --x / --no-x, a
    number, a tuple or list of them, optional or not) and described by its metadata's help; a type
    with no command-line form is an error here, not a string at run time."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        hint, kind = hints[f.name], {}
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if hint is bool:
            kind = dict(action=argparse.BooleanOptionalAction)
        elif typing.get_origin(hint) in (tuple, list):
            items = typing.get_args(hint)
            count = len(items) if typing.get_origin(hint) is tuple and Ellipsis not in items else "+"
            kind = dict(type=items[0], nargs=count)
        elif hint in (int, float, str):
            kind = dict(type=hint, choices=allowed.get(f.name))
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line form for {hint}")
        default = f.default if f.default is not MISSING else None
        ap.add_argument("--" + f.name.replace("_", "-"), default=None, **kind,
                        help=f"{f.metadata['help']} (default: {default})")


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
    """A ``Config`` from a preset, then a ``--config`` file, then the flags given, each over the last."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), help="start from a preset (flags given override it)")
    ap.add_argument("--config", help="a JSON file of settings (flags given override it)")
    allowed = choices()
    add_arguments(ap, Config, allowed)
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
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    return Config(**values)


def main(argv=None):
    Trainer(parse_args(argv)).fit()


cli = command(main)  # the console script (pyproject.toml): bad input as one line, no traceback

if __name__ == "__main__":
    cli()
