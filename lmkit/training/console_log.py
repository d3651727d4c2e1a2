"""What `lmkit train` shows on stderr while it trains: a progress bar on a terminal, plain lines elsewhere.

A progress bar redrawn in place is right for a person at a terminal and wrong for a log file (`nohup`, CI,
`> train.log`): there it shows nothing until the end, then one garbled line. So when stderr is not a
terminal the run prints one plain line per log interval, as nanoGPT does, and one per evaluation (which a
terminal shows above the bar):

    step 20/300 | loss 3.5121 | lr 6.00e-03 | 5,275 tok/s | ETA 0:01:12
    step 50/300 | val loss 3.9012 | val bpb 1.4070 | best 3.9012

Each line is flushed as it is written, so `tail -f` follows the run. `-q` turns both off (metrics.jsonl is
written either way).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Literal

from lmkit.progress import ProgressBar, progress_bar

Mode = Literal["bar", "lines", "off"]


def console_mode(show: bool) -> Mode:
    """ "off" when not shown; "bar" when stderr is a terminal; "lines" otherwise (a file, a pipe, CI)."""
    if not show:
        return "off"
    return "bar" if sys.stderr.isatty() else "lines"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def train_line(
    step: int, last_step: int, loss: float, lr: float, tokens_per_s: float | None, eta_s: float | None
) -> str:
    """One plain log line of a training step (tokens/s and ETA left out until known)."""
    parts = [f"step {step}/{last_step}", f"loss {loss:.4f}", f"lr {lr:.2e}"]
    if tokens_per_s:
        parts.append(f"{tokens_per_s:,.0f} tok/s")
    if eta_s is not None:
        parts.append(f"ETA {_duration(eta_s)}")
    return " | ".join(parts)


class TrainingConsole:
    """The run's live display: `step()` after every step, `logged()` / `evaluated()` when those lines are due."""

    def __init__(self, mode: Mode, first_step: int, last_step: int, bar: ProgressBar | None) -> None:
        self.mode, self.first_step, self.last_step, self._bar = mode, first_step, last_step, bar
        self._started = time.perf_counter()

    def say(self, text: str) -> None:
        """A line about the run as a whole (e.g. the thread count), unless quiet."""
        if self.mode != "off":
            print(text, file=sys.stderr, flush=True)

    def step(self, step: int, loss: float | None, lr: float, tokens_per_s: float | None) -> None:
        """After every step: move the bar (on a terminal). `loss` is the last one read (None before the first
        read): the loop reads it from the device at log intervals only."""
        if self._bar is not None:
            # The step is the bar's amount (step/total); the description stays short enough for 80 columns.
            shown = "" if loss is None else f"loss {loss:.3f} "
            rate = f" {tokens_per_s:,.0f} tok/s" if tokens_per_s else ""
            self._bar.advance(1)
            self._bar.update(description=f"{shown}lr {lr:.1e}{rate}")

    def logged(self, step: int, loss: float, lr: float, tokens_per_s: float | None) -> None:
        """At a log interval: one plain line (off a terminal)."""
        if self.mode == "lines":
            print(
                train_line(step, self.last_step, loss, lr, tokens_per_s, self._eta(step)), file=sys.stderr, flush=True
            )

    def evaluated(self, step: int, val_loss: float, val_bpb: float, best_val_loss: float) -> None:
        """After an evaluation: one line (above the bar on a terminal) with the best validation loss so far."""
        line = (
            f"step {step}/{self.last_step} | val loss {val_loss:.4f} | val bpb {val_bpb:.4f} | best {best_val_loss:.4f}"
        )
        if self._bar is not None:
            self._bar.print(line)
        elif self.mode == "lines":
            print(line, file=sys.stderr, flush=True)

    def sampled(self, step: int, prompt: str, text: str) -> None:
        """After a sample: the prompt and its continuation under a header line (above the bar on a terminal)."""
        block = f"step {step}/{self.last_step} | sample\n{prompt}{text}"
        if self._bar is not None:
            self._bar.print(block)
        elif self.mode == "lines":
            print(block, file=sys.stderr, flush=True)

    def _eta(self, step: int) -> float | None:
        done = step - self.first_step
        if done <= 0:
            return None
        return (time.perf_counter() - self._started) / done * (self.last_step - step)


@contextlib.contextmanager
def training_console(show: bool, first_step: int, last_step: int) -> Iterator[TrainingConsole]:
    """The display for a run going from `first_step` to `last_step` (a bar, plain lines or nothing; see above)."""
    mode = console_mode(show)
    with progress_bar("Training", last_step, "steps", start=first_step, enabled=mode == "bar") as bar:
        yield TrainingConsole(mode, first_step, last_step, bar if mode == "bar" else None)
