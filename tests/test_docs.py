"""Every command in README.md and docs/ runs as written: each ```bash block's commands are split
into their entry point, flags and config overrides, and each flag is checked against that entry
point's own parser, each det / seg override key against the config it names."""
import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# scripts that hand their arguments to an entry point
SCRIPTS = {"tools/pretrain.sh": "semaim_core.pretrain", "tools/slurm/pretrain.sbatch": "semaim_core.pretrain",
           "tools/slurm/det.sbatch": "det.train_net", "tools/slurm/seg.sbatch": "seg.tools.train"}


def commands(page: Path) -> list[str]:
    """The command lines of the page's bash blocks, continuation lines joined."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def entry_point(words: list[str]) -> tuple[str, list[str]] | None:
    """(module, its arguments) of a command, or None for one that runs no Python entry point
    (make, bash scripts, export, shell loops)."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):  # VAR=value before the command
        words = words[1:]
    if not words:
        return None
    if words[0] == "sbatch":  # sbatch's own options, then the batch script and its arguments
        words = words[next(i for i, w in enumerate(words) if w.endswith(".sbatch")):]
    if words[0] in SCRIPTS:
        return SCRIPTS[words[0]], words[1:]
    if words[0] in ("python", "torchrun") or words[0].endswith("/python"):
        if "-m" in words:
            i = words.index("-m")
            return words[i + 1], words[i + 2:]
        script = next((w for w in words[1:] if w.endswith(".py")), None)
        if script and (REPO / script).is_file():
            return script[:-3].replace("/", "."), words[words.index(script) + 1:]
    return None


class Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


def parser_of(module: str) -> argparse.ArgumentParser:
    """The ArgumentParser the entry point builds, caught when it parses."""
    mod = importlib.import_module(module)
    def catch(self, args=None, namespace=None):
        raise Parsed(self)

    originals = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    argparse.ArgumentParser.parse_args = argparse.ArgumentParser.parse_known_args = catch
    try:
        (getattr(mod, "parse_args", None) or mod.main)([])
    except Parsed as caught:
        return caught.parser
    finally:
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args = originals
    raise AssertionError(f"{module} parsed no arguments")


def config_keys_exist(module: str, args: list[str]) -> list[str]:
    """The det overrides (``key=value`` after the flags) and seg ``--cfg-options`` keys that the
    config they go to does not have."""
    missing = []
    if module == "det.train_net":
        from detectron2.config import LazyConfig
        from omegaconf import OmegaConf

        from semaim_core.configs import resolve_config
        name = args[args.index("--config") + 1] if "--config" in args else None
        if name:
            cfg = LazyConfig.load(resolve_config(name, REPO / "det" / "configs"))
            for word in args:
                key = word.split("=", 1)[0]
                if "=" in word and not word.startswith(("-", "+")) and OmegaConf.select(cfg, key, default=KeyError) \
                        is KeyError:
                    missing.append(key)
    if module in ("seg.tools.train", "seg.tools.test") and "--cfg-options" in args:
        from mmengine.config import Config

        from seg.tools.common import check_overrides
        from semaim_core.configs import resolve_config
        cfg = Config.fromfile(resolve_config(args[0], REPO / "seg" / "configs"))
        options = {w.split("=", 1)[0]: None for w in args[args.index("--cfg-options") + 1:] if "=" in w}
        try:
            check_overrides(cfg, options)
        except KeyError as e:
            missing.append(str(e))
    return missing


CASES = [(page, line) for page in PAGES for line in commands(page)
         if entry_point(shlex.split(line, comments=True))]


def test_the_pages_hold_commands_of_every_stage():
    modules = {entry_point(shlex.split(line, comments=True))[0] for _, line in CASES}
    assert {"semaim_core.pretrain", "tools.convert_checkpoint", "det.train_net", "seg.tools.train", "seg.tools.test",
            "cls.finetune", "cls.knn", "tools.make_tables", "tools.publish"} <= modules, modules


def launched(module: str, args: list[str]) -> list[tuple[str, list[str]]]:
    """(module, arguments) of the command and of the training a launcher starts: the submitit
    launcher's own flags come before ``--``, the training's after it."""
    if module != "tools.submitit_train":
        return [(module, args)]
    from tools.submitit_train import TRAININGS

    cut = args.index("--") if "--" in args else len(args)
    return [(module, args[:cut]), (TRAININGS[args[0]].module, args[cut + 1:])]


@pytest.mark.parametrize("page,line", CASES, ids=[f"{p.name}:{line[:60]}" for p, line in CASES])
def test_every_documented_command_uses_flags_its_entry_point_has(page, line):
    for module, args in launched(*entry_point(shlex.split(line, comments=True))):
        known = parser_of(module)._option_string_actions
        unknown = [w.split("=", 1)[0] for w in args if w.startswith("--") and w.split("=", 1)[0] not in known]
        assert not unknown, f"{page.name}: `{line}`: {module} has no {unknown}"
        assert not config_keys_exist(module, args), f"{page.name}: `{line}`: unknown config keys"


def test_a_wrong_flag_or_config_key_is_caught():
    module, args = entry_point(shlex.split("GPUS=8 tools/pretrain.sh --preset base --blrr 1e-4"))
    assert module == "semaim_core.pretrain" and "--blrr" not in parser_of(module)._option_string_actions
    module, args = entry_point(shlex.split("python -m det.train_net --config vitdet_semaim.py train.max_iters=5"))
    assert config_keys_exist(module, args) == ["train.max_iters"]
    module, args = entry_point(shlex.split(
        "sbatch --nodes 2 tools/slurm/seg.sbatch upernet_semaim.py --cfg-options model.bakbone.checkpoint=x"))
    assert module == "seg.tools.train" and "bakbone" in config_keys_exist(module, args)[0]
    words = shlex.split("python tools/submitit_train.py det --nodes 2 -- --config vitdet_semaim.py train.max_iters=5")
    (launcher, own), (training, args) = launched(*entry_point(words))
    assert own == ["det", "--nodes", "2"] and training == "det.train_net" and config_keys_exist(training, args)
