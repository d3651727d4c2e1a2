"""metrics.jsonl: one JSON object per line and event, so runs can be compared and plotted.

Each line has `event`, `step`, `tokens` (tokens trained on so far) and `time_s` (wall-clock seconds of
training, carried across resumes). "train" lines add `loss`, `lr`, `grad_norm` and `tokens_per_s` (and
`mfu`, the model FLOPs utilisation, where the device's peak is known); "eval" lines add `val_loss` and
`val_bpb` (bits per byte: the validation loss over the text bytes of the validation windows). Each stretch of
training (the first, and each resume) opens with a "start" line that adds `pid` and `host` (so `lmkit runs
list` can tell whether the process is still alive) and closes with an "end" line whose `status` says how it
ended: one of ENDINGS, with `error` for a crash. A process killed outright (kill -9, power loss) writes no
"end" line.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lmkit.training.config import RunConfig

from lmkit.fileio import atomic_write, full_disk_reported

# finished: all the configured steps; stopped: --until-step; interrupted: Ctrl-C or a termination signal;
# diverged: a NaN or infinite loss; crashed: any other failure.
ENDINGS = ("finished", "stopped", "interrupted", "diverged", "crashed")
_BOOKKEEPING = {"start", "end"}  # lines about the process, not the model: not mirrored


class MetricsSink(Protocol):
    """Somewhere else that hears of every model event (e.g. lmkit.tracking.wandb_log.WandbMirror)."""

    def log(self, event: str, fields: dict[str, float | int | None]) -> None:
        """Take one "train" or "eval" event's fields (with its `step`)."""

    def finish(self) -> None:
        """The run stretch is over."""


# Builds a run's sink from its config on the process that logs (None: this run asks for none).
SinkFactory = Callable[["RunConfig"], MetricsSink | None]


def process_facts() -> dict[str, object]:
    """This process's id and host name, for a "start" line."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


class MetricsLog:
    """Appends events to `path`, flushing every line so a crash or Ctrl-C loses nothing already logged.

    A fresh run (`resume_step=None`) starts the file anew. A resumed run keeps the lines up to its
    checkpoint's step and drops later ones, which the run is about to redo, so the curve has no repeats,
    and a line cut off by a crash (`kill -9` mid-write), with a warning.
    Every one of `sinks` gets each model event too (not the "start" and "end" bookkeeping), and is
    finished on close.
    """

    def __init__(
        self, path: str | os.PathLike, resume_step: int | None = None, sinks: Sequence[MetricsSink] = ()
    ) -> None:
        self._sinks = list(sinks)
        path = Path(path)
        if resume_step is not None and path.exists():
            kept = _lines_up_to(path, resume_step)
            with atomic_write(path, "w") as handle:
                handle.writelines(kept)
            self._file = path.open("a", encoding="utf-8")
        else:
            self._file = path.open("w", encoding="utf-8")

    def write(self, event: str, **fields: object) -> None:
        """Append one event line."""
        with full_disk_reported(self._file.name, "the events before it are kept"):
            self._file.write(json.dumps({"event": event, **fields}) + "\n")
            self._file.flush()
        if event not in _BOOKKEEPING:
            for sink in self._sinks:
                sink.log(event, fields)

    def close(self) -> None:
        """Close the file and finish the sinks."""
        self._file.close()
        for sink in self._sinks:
            sink.finish()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def _lines_up_to(path: Path, step: int) -> list[str]:
    """The lines of `path` logged at or before `step`. A line that is not a complete event (the last line
    of a run killed mid-write) is dropped with a warning."""
    kept = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            line_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            warnings.warn(f"{path} line {number} is not a complete event (cut off by a crash?); dropped", stacklevel=3)
            continue
        if line_step <= step:
            kept.append(line + "\n")
    return kept
