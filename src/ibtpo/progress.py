"""One progress bar for long jobs (training, warm-up, comparisons), silent when disabled."""

from __future__ import annotations

from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class _Bar:
    def __init__(self, progress: Progress | None, task_id=None):
        self._progress, self._task = progress, task_id

    def update(self, completed: float, text: str = "") -> None:
        """Move the bar to ``completed`` units and show ``text`` (key figures) beside it."""
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, info=text)


@contextmanager
def progress_bar(enabled: bool, total: float, completed: float = 0, unit: str = "steps",
                 description: str = ""):
    """``with progress_bar(True, 100) as bar: bar.update(10, "loss 0.3")``."""
    if not enabled:
        yield _Bar(None)
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn(unit), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
               TextColumn("{task.fields[info]}"))
    with Progress(*columns) as progress:
        task = progress.add_task(description, total=total, completed=completed, info="")
        yield _Bar(progress, task)
