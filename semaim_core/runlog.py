"""What a training run writes while it runs: ``RunLog`` for pretraining and the cls trainers, and
``metrics.jsonl``, one row per logged step in one schema (``step_row``) that every trainer of the
suite writes (pretraining, cls, det, seg), so that one script (tools/compare_loss_curves.py) reads
and plots any run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from .rundir import drop_rows_after, drop_text_lines_after


class RunLog:
    """A run's progress bar (tqdm over its steps), its rows as JSON lines in ``<rows>.jsonl`` and as
    TensorBoard scalars under ``tb/``, and with ``text_log`` the same rows as plain text in
    ``log.txt`` (as MAE's). Resumed at ``start``: rows a killed run wrote past its last checkpoint
    are dropped, as are TensorBoard's. Only the main process writes: elsewhere (``main=False``)
    every method does nothing. A context manager, so the files are closed however the run ends.

    ``key``: the row field that counts (``step``, ``epoch``); ``bar_start`` and ``total``: where
    the bar starts and ends, in steps. ``step_rows``: a trainer whose rows are not per step (cls:
    per epoch) also writes metrics.jsonl (``StepRows``, from step ``bar_start``) through ``step``."""

    def __init__(self, folder: str | Path, *, rows: str, key: str, start: int, bar_start: int, total: int,
                 desc: str, tb_prefix: str, text_log: bool = False, step_rows: bool = False, main: bool = True):
        self.folder, self.rows, self.key, self.start = Path(folder), rows, key, start
        self.bar_start, self.total, self.desc, self.tb_prefix = bar_start, total, desc, tb_prefix
        self.text_log, self.step_rows, self.main = text_log, step_rows, main
        self.file = self.tb = self.text = self.bar = self.steps = None

    def __enter__(self) -> RunLog:
        if not self.main:
            return self
        from torch.utils.tensorboard import SummaryWriter

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.rows}.jsonl"
        drop_rows_after(path, self.key, self.start)
        self.file = open(path, "a")
        self.tb = SummaryWriter(self.folder / "tb", purge_step=self.start + 1 if self.start else None)
        if self.text_log:
            drop_text_lines_after(self.folder / "log.txt", self.start)
            self.text = open(self.folder / "log.txt", "a")
        if self.step_rows:
            self.steps = StepRows(self.folder, self.bar_start)
        self.bar = tqdm(total=self.total, initial=self.bar_start, desc=self.desc, dynamic_ncols=True)
        return self

    def __exit__(self, *exc):
        for part in (self.bar, self.file, self.tb, self.text, self.steps):
            if part is not None:
                part.close()
        self.file = self.tb = self.text = self.bar = self.steps = None

    def advance(self, **postfix):
        """One step done; ``postfix`` is shown beside the bar."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(**postfix)

    def write(self, row: dict, scalars=None, text: str | None = None):
        """Append ``row``; its ``scalars`` (default: every number) go to TensorBoard at ``row[key]``,
        and ``text`` to log.txt."""
        if self.file is None:
            return
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        for k in scalars if scalars is not None else row:
            if k != self.key and isinstance(row[k], (int, float)):
                self.tb.add_scalar(f"{self.tb_prefix}/{k}", row[k], row[self.key])
        self.note(text)

    def step(self, row: dict):
        """A row of metrics.jsonl (``step_row``), with ``step_rows``."""
        if self.steps is not None:
            self.steps.write(row)

    def note(self, text: str | None):
        """A line for log.txt alone (a start, a resume)."""
        if self.text is not None and text:
            self.text.write(text + "\n")
            self.text.flush()

    def warn(self, message: str | None):
        """A warning on stderr, above the bar, and in log.txt."""
        if self.bar is not None and message:
            tqdm.write(message, file=sys.stderr)
            self.note(message)


STEP_ROWS = "metrics.jsonl"


def step_row(step: int, epoch: int | None, losses: dict, lr: float, seconds: float | None, **extra) -> dict:
    """A row of metrics.jsonl: ``step`` (optimizer steps done), ``epoch`` (the epoch the step was in;
    None for iteration-based schedules: det, seg), ``loss`` (the total: ``losses["loss"]``, else
    the sum of the terms), ``losses`` (each term by name), ``lr`` and ``time`` (the step's seconds),
    then a trainer's own fields."""
    total = losses["loss"] if "loss" in losses else sum(losses.values())
    terms = {k: float(v) for k, v in losses.items() if k != "loss"}
    return dict(step=int(step), epoch=epoch, loss=float(total), losses=terms, lr=float(lr),
                time=None if seconds is None else float(seconds), **extra)


class StepRows:
    """``folder/metrics.jsonl`` of a run, appended row by row (``step_row``); opened at ``start``,
    it drops the rows a killed run wrote past its last checkpoint. A context manager."""

    def __init__(self, folder: str | Path, start: int):
        self.path = Path(folder) / STEP_ROWS
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_rows_after(self.path, "step", start)
        self.file = open(self.path, "a")

    def write(self, row: dict):
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self):
        self.file.close()

    def __enter__(self) -> StepRows:
        return self

    def __exit__(self, *exc):
        self.close()
