"""How the suite's own code reports: one logger per module (``logging.getLogger(__name__)``), set up
once by the entry point (``errors.command`` calls ``setup_logging``). Messages print as plain lines,
information on stdout and warnings on stderr; information from the process of rank 0 only, warnings
from every rank. detectron2 and mmengine keep their loggers, and det's and seg's glue logs through
them (a child of ``detectron2``'s logger, mmengine's ``print_log``), so that a run's log file holds it.
"""
from __future__ import annotations

import logging
import os
import sys

SUITE_LOGGERS = ("semaim_core", "cls", "det", "tools")


class _StreamAtEmit(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` / ``sys.stderr`` is when a message is written (a redirect, a
    test's capture), not to the stream of the moment the handler was made."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    @property
    def stream(self):
        return getattr(sys, self.name)

    @stream.setter
    def stream(self, _):  # StreamHandler.__init__ sets it
        pass


def _below_warning(record: logging.LogRecord) -> bool:
    return record.levelno < logging.WARNING


def setup_logging(rank: int | None = None) -> None:
    """Print the suite's messages (loggers ``SUITE_LOGGERS``): INFO on rank 0, WARNING and above on
    every rank (``rank``: default from ``RANK``, as torchrun and srun set it). Calling it again
    changes nothing."""
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) if rank is None else rank
    for name in SUITE_LOGGERS:
        log = logging.getLogger(name)
        if any(isinstance(h, _StreamAtEmit) for h in log.handlers):
            continue
        out, err = _StreamAtEmit("stdout"), _StreamAtEmit("stderr")
        out.addFilter(_below_warning)
        err.setLevel(logging.WARNING)
        for handler in (out, err):
            handler.setFormatter(logging.Formatter("%(message)s"))
            log.addHandler(handler)
        log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
        log.propagate = False  # a framework's root handler would print it twice
