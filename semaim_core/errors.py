"""Bad input, and how the command-line entry points report it.

Every error the suite raises for something the user gave (a path, a file, a setting, a dataset)
derives from ``UserError``, and its message names the input and the fix. An entry point run from
the command line (``command(main)``) prints such an error as one line, ``error: ...``, and exits
with status 1; any other exception is a bug and keeps its traceback. Called from Python, ``main``
raises the error itself, so tests and notebooks can catch it by type.
"""
from __future__ import annotations

import argparse
import functools
import math
import sys


class UserError(Exception):
    """Bad input: the message names what was given and what to do instead."""


class SettingError(UserError, ValueError):
    """A setting out of its range, or settings that contradict each other or the data."""


class UnknownKeyError(UserError, KeyError):
    """A config key that does not exist (a typo): the message names the closest one."""

    def __str__(self):  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class DataError(UserError, FileNotFoundError):
    """A dataset or data folder that is missing or laid out otherwise than the entry point needs."""


class InputErrors(UserError):
    """Several inputs of one start that cannot be used, reported together."""

    def __init__(self, problems: list[UserError]):
        super().__init__(problems)
        self.problems = problems

    def __str__(self):
        return f"{len(self.problems)} inputs cannot be used:\n" + "\n".join(f"  - {p}" for p in self.problems)


def check_all(checks) -> None:
    """Run every check (a function that raises a ``UserError``) and report all that fail at once, one
    line each: a start that would fail on its inputs says so before it claims its run directory,
    and the user fixes everything in one go."""
    problems = []
    for check in checks:
        try:
            check()
        except UserError as e:
            if str(e) not in map(str, problems):  # val and test on one dataset: named once
                problems.append(e)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise InputErrors(problems)


class command:
    """``main(argv)`` as a command-line entry point: the suite's messages printed (``logs.setup_logging``),
    and a ``UserError`` as one line on stderr and exit status 1 instead of a traceback. (A class, not
    a closure, so that detectron2's launcher can pickle it into its worker processes.)"""

    def __init__(self, main):
        self.main = main
        functools.update_wrapper(self, main)

    def __call__(self, argv=None):
        from .logs import setup_logging

        setup_logging()
        try:
            return self.main(argv)
        except UserError as e:
            sys.exit(f"error: {e}")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` as the entry points print it: the description as written, each option's default."""


def positive_int(text: str) -> int:
    """An argparse type: a whole number above 0 (a count of blocks, heads, layers)."""
    if not text.lstrip("+-").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number above 0")
    return int(text)


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number of 0 or more (a weight decay, say)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number of 0 or more")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0 (an lr, say)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number above 0")
    return value
