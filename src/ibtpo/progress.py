"""Progress of long jobs (training, warm-up, comparisons): a live bar, plain lines, or nothing.

`progress_bar(enabled, ...)`: `enabled` is True (a live bar when standard error is a terminal;
one plain line per update otherwise, so that a CI log or a `nohup` file gets whole lines, never
a bar cut to the width of a terminal that is not there), "lines" (one line per update, always:
the CLI's `--no-progress`) or False (silent: the Python API's `progress=False`, the tests).
Both go to standard error: standard output keeps a command's result (`ibtpo score`'s JSON).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

LINES = "lines"


class _Bar:
    def __init__(self, progress: Progress | None, task_id=None):
        self._progress, self._task = progress, task_id

    def update(self, completed: float, text: str = "") -> None:
        """Move the bar to ``completed`` units and show ``text`` (key figures) beside it."""
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, info=text)


class _Lines:
    """One line per update: '[sft] 30/1,000 steps  0:00:12  loss 0.31'."""

    def __init__(self, total: float, unit: str, description: str, stream=None):
        self.total, self.unit, self.stream = total, unit, stream or sys.stderr
        self.prefix = f"[{description}] " if description else ""
        self.start = time.monotonic()

    def update(self, completed: float, text: str = "") -> None:
        seconds = int(time.monotonic() - self.start)
        clock = f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        line = f"{self.prefix}{completed:,.0f}/{self.total:,.0f} {self.unit}  {clock}"
        print(f"{line}  {text}" if text else line, file=self.stream, flush=True)


def counted(n: int, unit: str) -> str:
    """'1 step', '2 steps', '1,000 steps' (`unit` singular, plural by an 's')."""
    return f"{n:,} {unit}{'' if n == 1 else 's'}"


def is_terminal() -> bool:
    """Whether standard error is an interactive terminal (a TTY; FORCE_COLOR does not count)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


@contextmanager
def progress_bar(enabled: bool | str, total: float, completed: float = 0, unit: str = "steps",
                 description: str = ""):
    """``with progress_bar(True, 100) as bar: bar.update(10, "loss 0.3")``."""
    if not enabled:
        yield _Bar(None)
        return
    if enabled == LINES or not is_terminal():
        yield _Lines(total, unit, description)
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn(unit), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
               TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(description, total=total, completed=completed, info="")
        yield _Bar(progress, task)
