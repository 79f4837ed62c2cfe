"""What a training run writes while it runs, for pretraining and the cls trainers alike."""
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

    ``key``: the row field that counts (``step``, ``epoch``); ``start`` and ``total``: where the
    bar starts and ends, in steps."""

    def __init__(self, folder: str | Path, *, rows: str, key: str, start: int, bar_start: int, total: int,
                 desc: str, tb_prefix: str, text_log: bool = False, main: bool = True):
        self.folder, self.rows, self.key, self.start = Path(folder), rows, key, start
        self.bar_start, self.total, self.desc, self.tb_prefix = bar_start, total, desc, tb_prefix
        self.text_log, self.main = text_log, main
        self.file = self.tb = self.text = self.bar = None

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
        self.bar = tqdm(total=self.total, initial=self.bar_start, desc=self.desc, dynamic_ncols=True)
        return self

    def __exit__(self, *exc):
        for part in (self.bar, self.file, self.tb, self.text):
            if part is not None:
                part.close()
        self.file = self.tb = self.text = self.bar = None

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
