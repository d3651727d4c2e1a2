"""Runs on disk: finding the folders `lmkit train` writes, reading them, judging how each one ended,
and the facts that `lmkit runs list` and `lmkit runs compare` report.

A run folder is a folder holding both `config.toml` (the resolved run config) and `metrics.jsonl` (the
format is in lmkit.training.metrics); `lmkit train` writes both as a run starts. Only these two files are
read: no checkpoint is opened, so listing a hundred runs is quick.

A run's status is decided by the first rule that holds:
1. diverged: a logged train loss, validation loss or gradient norm is NaN or infinite;
2. what the run wrote itself: `lmkit train` opens each stretch of training with a "start" line (its process
   id and host) and closes it with an "end" line whose status is finished, stopped (--until-step),
   interrupted (Ctrl-C or a termination signal), diverged or crashed. With a "start" line and no "end"
   line after it, the run is running while that process is alive, and crashed once it is gone (killed
   outright); diverged if its train loss exploded (rule 5) before it died. A run started on another host
   cannot be checked from here and falls through to rule 4;
3. finished: the last logged step reached the configured number of steps (`train.steps`, or
   `train.total_tokens` in steps);
4. running: metrics.jsonl changed within the last max(RUNNING_MIN_S, RUNNING_GAPS x the longest gap in
   training time between two logged lines), so a run that logs rarely is not taken for dead;
5. diverged: the train loss exploded: some logged train loss is more than EXPLODE_RATIO times the lowest
   one logged before it, and more than EXPLODE_MIN_RISE nats above it;
6. crashed: it stopped before the configured steps for any other reason.

Rules 3 to 6 are for runs written before the "start" and "end" lines existed (and runs from other hosts).
`lmkit train --resume RUN/last.pt` continues a run that did not finish.
"""

from __future__ import annotations

import json
import math
import socket
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lmkit.accounting import parameter_counts
from lmkit.checkpoint import CONFIG_FILE, METRICS_FILE
from lmkit.errors import InputError
from lmkit.fileio import process_exists
from lmkit.training.config import RunConfig, load_config

STATUSES = ("finished", "running", "stopped", "interrupted", "crashed", "diverged")
RUNNING_MIN_S = 300.0
RUNNING_GAPS = 3
EXPLODE_RATIO = 2.0
EXPLODE_MIN_RISE = 1.0
# Every run of a comparison has its own folder, so this field always differs and says nothing.
_ALWAYS_DIFFERENT = {"train.out_dir"}


@dataclass(frozen=True)
class Run:
    """One run folder as read from disk: its config, its metrics events in order, and when they last changed."""

    name: str
    path: Path
    config: RunConfig
    records: list[dict[str, Any]]
    modified: float  # metrics.jsonl's modification time, seconds since the epoch

    def values(self, event: str, field: str) -> list[float]:
        """The `field` of every `event` line that has one, in order (non-finite values included)."""
        return [r[field] for r in self.records if r.get("event") == event and isinstance(r.get(field), int | float)]

    def last(self, field: str) -> Any:
        """`field` of the last line that has it, or None."""
        return next((r[field] for r in reversed(self.records) if field in r), None)


def is_run(folder: Path) -> bool:
    """True if `folder` holds the config.toml and metrics.jsonl that `lmkit train` writes."""
    return (folder / CONFIG_FILE).is_file() and (folder / METRICS_FILE).is_file()


def find_runs(root: str | Path) -> list[Path]:
    """The run folders in `root` and below (root included), sorted by path; InputError if there are none."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; give the folder that holds your runs (e.g. runs/)")
    found = sorted({path.parent for path in root.rglob(METRICS_FILE) if is_run(path.parent)})
    if not found:
        raise InputError(
            f"no runs found in {root} (a run folder holds the config.toml and metrics.jsonl of lmkit train)"
        )
    return found


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The events of a metrics.jsonl file. A last line cut off by a crash is dropped; other damage is an error."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text file of JSON lines") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                warnings.warn(f"{path}: the last line is cut off (the run was killed mid-write); skipped", stacklevel=2)
                break
            raise InputError(f"{path} line {number} is not JSON; metrics files are written by lmkit train") from None
        if not isinstance(record, dict):
            raise InputError(f"{path} line {number} is not a JSON object")
        records.append(record)
    return records


def read_run(folder: str | Path, name: str | None = None) -> Run:
    """Read the run in `folder` (named `name`, by default the folder as given)."""
    folder = Path(folder)
    if not is_run(folder):
        raise InputError(f"{folder} is not a run folder (no {CONFIG_FILE} and {METRICS_FILE} from lmkit train)")
    metrics = folder / METRICS_FILE
    return Run(
        name=str(folder) if name is None else name,
        path=folder,
        config=load_config(folder / CONFIG_FILE),
        records=read_metrics(metrics),
        modified=metrics.stat().st_mtime,
    )


def list_runs(root: str | Path) -> list[Run]:
    """Every run in `root` and below, named by its path relative to `root`."""
    root = Path(root)
    runs = []
    for folder in find_runs(root):
        runs.append(read_run(folder, _name_within(folder, root)))
    return runs


def _name_within(folder: Path, root: Path) -> str:
    """A run's name: its path from `root`, or its folder's own name when it is `root`."""
    relative = folder.relative_to(root)
    return relative.as_posix() if relative.parts else folder.resolve().name


def load_runs(paths: list[str | Path]) -> list[Run]:
    """The runs named on a command line: each path is a run folder or a folder of runs (a sweep, say).

    A run is named by its folder's name, or within a folder given, by its path from there (`optim.lr=1e-3`);
    by the path as found where two names would be the same. Runs that differ only in numbers (a sweep) come
    in the order of those numbers, not of their folders' names (1e-3, 6e-3, 1e-1 rather than 1e-1, 1e-3, 6e-3).
    """
    runs: dict[Path, Run] = {}
    for given in map(Path, paths):
        if not given.exists():
            raise InputError(f"{given} does not exist")
        folders = [given] if is_run(given) else find_runs(given)
        for folder in folders:
            if folder.resolve() not in runs:
                runs[folder.resolve()] = read_run(folder, _name_within(folder, given))
    found = list(runs.values())
    if len({run.name for run in found}) < len(found):
        found = [replace(run, name=str(run.path)) for run in found]
    return in_sweep_order(found)


def in_sweep_order(runs: list[Run]) -> list[Run]:
    """`runs` ordered by the values of the config fields that differ between them, where those are all
    numbers (a sweep over optim.lr, say); otherwise as they are."""
    differences = config_differences(runs)
    numeric = all(
        isinstance(value, int | float) and not isinstance(value, bool)
        for values in differences.values()
        for value in values
    )
    if not differences or not numeric:
        return runs
    keys = [tuple(values[number] for values in differences.values()) for number in range(len(runs))]
    return [run for _, run in sorted(zip(keys, runs, strict=True), key=lambda pair: pair[0])]


def _exploded(losses: list[float]) -> bool:
    best = math.inf
    for loss in losses:
        if loss > EXPLODE_RATIO * best and loss > best + EXPLODE_MIN_RISE:
            return True
        best = min(best, loss)
    return False


def _running_window(run: Run) -> float:
    times = [r["time_s"] for r in run.records if isinstance(r.get("time_s"), int | float)]
    longest_gap = max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)
    return max(RUNNING_MIN_S, RUNNING_GAPS * longest_gap)


def _own_ending(run: Run) -> str | None:
    """The status the run's last "start" line and the "end" line after it give (rule 2), or None to go on."""
    starts = [i for i, r in enumerate(run.records) if r.get("event") == "start"]
    last_start = starts[-1] if starts else 0
    end = next((r for r in run.records[last_start:] if r.get("event") == "end"), None)
    if end is not None:
        return str(end.get("status", "crashed"))
    if not starts:
        return None
    start = run.records[last_start]
    if start.get("host") != socket.gethostname() or not isinstance(start.get("pid"), int):
        return None
    if process_exists(start["pid"]):
        return "running"
    return "diverged" if _exploded(run.values("train", "loss")) else "crashed"


def run_status(run: Run, now: float | None = None) -> str:
    """finished, running, stopped, interrupted, crashed or diverged: see the module docstring for the rules."""
    now = time.time() if now is None else now
    logged = run.values("train", "loss") + run.values("eval", "val_loss") + run.values("train", "grad_norm")
    if not all(math.isfinite(value) for value in logged):
        return "diverged"
    own = _own_ending(run)
    if own is not None:
        return own
    if (run.last("step") or 0) >= run.config.total_steps:
        return "finished"
    if now - run.modified <= _running_window(run):
        return "running"
    return "diverged" if _exploded(run.values("train", "loss")) else "crashed"


def _finite_min(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return min(finite) if finite else None


def run_summary(run: Run, now: float | None = None) -> dict[str, Any]:
    """The facts `lmkit runs list` shows for a run (losses None until logged)."""
    model = run.config.model
    train_losses, val_losses = run.values("train", "loss"), run.values("eval", "val_loss")
    val_bpbs = run.values("eval", "val_bpb")  # absent from runs logged before lmkit recorded bits per byte
    return {
        "name": run.name,
        "path": str(run.path),
        "layers": model.num_layers,
        "d_model": model.d_model,
        "heads": model.num_heads,
        "parameters": parameter_counts(model)["total"],
        "step": run.last("step") or 0,
        "total_steps": run.config.total_steps,
        "tokens": run.last("tokens") or 0,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "final_val_loss": val_losses[-1] if val_losses else None,
        "best_val_loss": _finite_min(val_losses),
        "final_val_bpb": val_bpbs[-1] if val_bpbs else None,
        "best_val_bpb": _finite_min(val_bpbs),
        "time_s": run.last("time_s") or 0.0,
        "status": run_status(run, now),
    }


def _flat_config(run: Run) -> dict[str, Any]:
    return {
        f"{table}.{key}": value
        for table, fields in run.config.model_dump(mode="json").items()
        for key, value in fields.items()
    }


def config_differences(runs: list[Run]) -> dict[str, list[Any]]:
    """Each config field (`table.key`) whose value is not the same in every run, with the runs' values in order."""
    flat = [_flat_config(run) for run in runs]
    keys = dict.fromkeys(key for config in flat for key in config)
    return {
        key: [config.get(key) for config in flat]
        for key in keys
        if key not in _ALWAYS_DIFFERENT and len({json.dumps(config.get(key)) for config in flat}) > 1
    }


COMPARED_METRICS = (
    "status",
    "step",
    "tokens",
    "final_train_loss",
    "final_val_loss",
    "best_val_loss",
    "final_val_bpb",
    "best_val_bpb",
    "time_s",
)


def compare_runs(runs: list[Run], now: float | None = None) -> dict[str, Any]:
    """What `lmkit runs compare` reports: the run names, the differing config fields and the runs' metrics,
    each as a list aligned with the names."""
    if len(runs) < 2:
        raise InputError("give at least two runs to compare (run folders, or a folder holding several runs)")
    summaries = [run_summary(run, now) for run in runs]
    return {
        "runs": [run.name for run in runs],
        "differences": config_differences(runs),
        "metrics": {fact: [summary[fact] for summary in summaries] for fact in COMPARED_METRICS},
    }
