"""Sweeps: `lmkit train --config run.toml --sweep optim.lr=1e-4,3e-4,1e-3` trains one run per value.

Each run is an ordinary `lmkit train` run (the same entry point, `train_from_files`) with the value set
like a `--set` override and its own folder `OUT_DIR/KEY=VALUE` under the config's `train.out_dir`, so the
runs of a sweep are siblings and `lmkit runs plot OUT_DIR` overlays them. Every value is validated, and
every folder checked, before the first run starts. The runs go one after another; a run whose loss
becomes NaN is recorded as diverged and the sweep goes on (the top of a learning-rate sweep often does);
Ctrl-C stops the sweep after saving the current run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lmkit.checkpoint import LAST_CHECKPOINT
from lmkit.errors import InputError
from lmkit.training.config import OverrideError, load_config
from lmkit.training.loop import TrainingDiverged, TrainResult, train_from_files
from lmkit.training.metrics import SinkFactory


@dataclass(frozen=True)
class SweepRun:
    """One planned run of a sweep: the swept key and value, its folder, and all the overrides it trains with."""

    key: str
    value: str
    out_dir: Path
    overrides: list[str]


@dataclass(frozen=True)
class SweepOutcome:
    """How one run of a sweep ended: its result, or the message of the divergence that stopped it."""

    run: SweepRun
    result: TrainResult | None
    diverged: str | None

    @property
    def status(self) -> str:
        """finished, diverged, interrupted (by Ctrl-C) or stopped (by --until-step)."""
        if self.result is None:
            return "diverged"
        if self.result.step >= self.result.total_steps:
            return "finished"
        return "interrupted" if self.result.interrupted else "stopped"


def parse_sweep(spec: str) -> tuple[str, list[str]]:
    """`KEY=V1,V2,...` -> (KEY, [V1, V2, ...]); commas inside [...] belong to a list value."""
    key, sep, values = spec.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"\w+(\.\w+)+", key):
        raise InputError(f"--sweep {spec!r}: expected TABLE.KEY=V1,V2,..., e.g. --sweep optim.lr=1e-4,3e-4,1e-3")
    if key == "train.out_dir":
        raise InputError("--sweep cannot sweep train.out_dir: the sweep gives each run its own folder")
    items = [item.strip() for item in re.split(r",(?![^\[]*\])", values)]
    if not all(items):
        raise InputError(f"--sweep {spec!r}: a value is empty; separate values with single commas")
    return key, items


def _folder_name(key: str, value: str) -> str:
    return re.sub(r"[^\w.=+-]", "_", f"{key}={value}")


def plan_sweep(config_path: str | Path | None, overrides: list[str], spec: str) -> list[SweepRun]:
    """The runs of a sweep, each value validated like a `--set` override; InputError before anything runs."""
    if config_path is None:
        raise InputError("--sweep needs --config run.toml")
    key, values = parse_sweep(spec)
    base = load_config(config_path, overrides).train.out_dir
    plan = []
    for value in values:
        out_dir = base / _folder_name(key, value)
        # json.dumps makes the folder a TOML string, whatever characters it holds.
        run_overrides = [*overrides, f"{key}={value}", f"train.out_dir={json.dumps(str(out_dir))}"]
        try:
            load_config(config_path, run_overrides)
        except OverrideError as err:
            swept = err.override == f"{key}={value}"
            raise InputError(f"--sweep {key}={value}: {err.detail if swept else err}") from None
        except InputError as err:
            raise InputError(f"--sweep {key}={value}: {err}") from None
        if (out_dir / LAST_CHECKPOINT).exists():
            raise InputError(f"{out_dir} already holds a run; remove it or set train.out_dir to a new folder")
        plan.append(SweepRun(key, value, out_dir, run_overrides))
    if len({run.out_dir for run in plan}) < len(plan):
        raise InputError(f"--sweep {spec!r}: two values give the same run folder; list each value once")
    return plan


def run_sweep(
    config_path: str | Path,
    plan: list[SweepRun],
    until_step: int | None = None,
    show_progress: bool = True,
    announce: Callable[[str], None] = lambda line: None,
    sinks: Sequence[SinkFactory] = (),
) -> list[SweepOutcome]:
    """Train the planned runs one after another (see the module docstring); `announce` hears of each start;
    `sinks` as for `train_from_files`."""
    outcomes = []
    for number, run in enumerate(plan, 1):
        announce(f"sweep run {number}/{len(plan)}: {run.key}={run.value} in {run.out_dir}")
        try:
            result = train_from_files(config_path, run.overrides, None, until_step, show_progress, sinks=sinks)
        except TrainingDiverged as err:
            outcomes.append(SweepOutcome(run, None, str(err)))
            continue
        outcomes.append(SweepOutcome(run, result, None))
        if result.interrupted:
            break
    return outcomes
