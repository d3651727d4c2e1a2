"""One progress bar for every long-running job: a description, a unit, a rate and an ETA (on stderr)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

_stderr = Console(stderr=True)
WIDE_TERMINAL = 110  # columns from which a bar also shows its rate and the elapsed time


class _AmountColumn(ProgressColumn):
    """Shows `done/total unit` and the rate, with the amounts divided by the task's scale.

    The rate is the average since the bar started, not rich's estimate over the last few updates: work that
    lands in bursts (results of parallel workers collected at the end) would show a rate many times the real
    one, and disagree with the summary printed after.
    """

    def render(self, task: Task) -> Text:
        scale, unit = task.fields["scale"], task.fields["unit"]
        done, since_start = task.completed / scale, (task.completed - task.fields["first"]) / scale
        total = "?" if task.total is None else f"{task.total / scale:,.{task.fields['digits']}f}"
        elapsed = task.finished_time if task.finished else task.elapsed
        rate = f" {since_start / elapsed:,.1f} {unit}/s" if task.fields["rate"] and elapsed and since_start else ""
        return Text(f"{done:,.{task.fields['digits']}f}/{total} {unit}{rate}", style="progress.download")


class ProgressBar:
    """A handle on one running bar: `advance(amount)` moves it by `amount` raw units (bytes, steps...)."""

    def __init__(self, progress: Progress | None, task_id: int | None) -> None:
        self._progress, self._task_id = progress, task_id

    def advance(self, amount: float = 1) -> None:
        """Move the bar forward by `amount` raw units."""
        if self._progress is not None:
            self._progress.advance(self._task_id, amount)

    def print(self, text: str) -> None:
        """A line above the bar, which stays in the terminal's scrollback as the bar moves on."""
        if self._progress is not None:
            self._progress.console.print(text, highlight=False, markup=False)

    def update(self, description: str | None = None, **fields: object) -> None:
        """Change the description (e.g. to show the current loss)."""
        if self._progress is not None:
            kwargs = {"description": description} if description is not None else {}
            self._progress.update(self._task_id, **kwargs, **fields)


@contextlib.contextmanager
def progress_bar(
    description: str, total: float | None, unit: str, *, scale: float = 1.0, start: float = 0, enabled: bool = True
) -> Iterator[ProgressBar]:
    """Show a bar while the block runs. Amounts are given in raw units and shown divided by `scale`; the bar
    starts at `start` of `total` (a resumed job), and its rate and ETA count only what is done from there.

    For bytes shown as MB: `progress_bar("Encoding", total=n_bytes, unit="MB", scale=1e6)`.
    With `enabled=False` nothing is drawn and `advance` costs nothing.
    """
    if not enabled:
        yield ProgressBar(None, None)
        return
    digits = 1 if scale != 1.0 else 0
    # On a narrow terminal (80 columns) the bar shortens and the rate and elapsed time go, so that the amount
    # done and the ETA stay whole on one line.
    wide = _stderr.width >= WIDE_TERMINAL
    columns = [TextColumn("[bold]{task.description}"), BarColumn(bar_width=40 if wide else 10), TaskProgressColumn()]
    columns += [_AmountColumn(), *([TimeElapsedColumn()] if wide else []), TextColumn("ETA"), TimeRemainingColumn()]
    progress = Progress(*columns, console=_stderr, transient=False)
    with progress:
        task_id = progress.add_task(
            description, total=total, completed=start, unit=unit, scale=scale, digits=digits, first=start, rate=wide
        )
        yield ProgressBar(progress, task_id)
