"""`lmkit runs ...`: list, compare and plot the runs `lmkit train` wrote; and the report of `lmkit train --sweep`."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.table import Table

from lmkit.cli.common import console, err_console, print_json

app = typer.Typer(no_args_is_help=True, help="List, compare and plot training runs.")

_STATUS_STYLE = {
    "finished": "green",
    "running": "cyan",
    "crashed": "yellow",
    "diverged": "red",
    "interrupted": "yellow",
    "stopped": "blue",
}


# The table shows time as h:mm:ss; its label says so (--json keeps time_s, in seconds).
_COMPARE_LABELS = {"time_s": "time (h:mm:ss)"}


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"  # as in the TOML config
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _short(count: int) -> str:
    for suffix, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{suffix}"
    return str(count)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _status(status: str) -> str:
    return f"[{_STATUS_STYLE.get(status, 'default')}]{status}[/]"


def _print(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True
    )
    for number, column in enumerate(columns):
        # Only the first column (names, folders) folds: numbers and statuses stay whole on narrow terminals.
        table.add_column(column, overflow="fold", no_wrap=number > 0)
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.command("list")
def list_command(
    directory: Path = typer.Argument(Path("runs"), help="Folder holding run folders (searched recursively)."),
    as_json: bool = typer.Option(False, "--json", help="Print the facts as one JSON object."),
) -> None:
    """List the runs in a folder: shape, parameters, tokens, steps, best validation loss and bpb, time, status.

    Shape is layers x d_model and heads (2x512 h8). Status is finished, running, stopped (--until-step),
    interrupted, crashed or diverged
    (the rules are in docs/experiments.md).

    Example:

        lmkit runs list runs/
    """
    from lmkit.tracking.runs import list_runs, run_summary

    summaries = [run_summary(run) for run in list_runs(directory)]
    if as_json:
        print_json({"runs": summaries})
        return
    columns = ["run", "shape", "params", "tokens", "steps", "best val", "time", "status"]
    rows = [
        [
            s["name"],
            f"{s['layers']}x{s['d_model']} h{s['heads']}",
            _short(s["parameters"]),
            _short(s["tokens"]),
            f"{s['step']:,}/{s['total_steps']:,}",
            _value(s["best_val_loss"]),
            _duration(s["time_s"]),
            _status(s["status"]),
        ]
        for s in summaries
    ]
    if any(s["best_val_bpb"] is not None for s in summaries):  # runs logged before lmkit recorded bpb have none
        columns.insert(6, "best bpb")
        for row, s in zip(rows, summaries, strict=True):
            row.insert(6, _value(s["best_val_bpb"]))
    _print(f"Runs in {directory}", columns, rows)


@app.command()
def plot(
    runs: list[Path] = typer.Argument(..., help="Run folders, or folders holding runs (e.g. a sweep)."),
    x: str = typer.Option("steps", "--x", help="The x axis: steps, tokens or time."),
    metric: str = typer.Option("val_loss", "--metric", help="val_loss, val_bpb, train_loss, lr or grad_norm."),
    log: bool = typer.Option(False, "--log", help="Logarithmic y axis."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="The image to write (.png, .svg or .pdf); default: RUNS/METRIC-X.png."
    ),
) -> None:
    r"""Overlay the runs' learning curves in one image; diverged runs are marked with a cross.

    Needs matplotlib: pip install "lmkit\[plot]".

    Example:

        lmkit runs plot runs/lr-sweep --x tokens --metric val_loss --log --out lr-sweep.png
    """
    from lmkit.tracking.plot import default_plot_path, plot_runs

    out = out if out is not None else default_plot_path(runs, metric, x)
    replaced = out.exists()
    series = plot_runs(runs, metric, x, out, log)
    count = f"{len(series)} run{'s' if len(series) != 1 else ''}"
    verb = "replaced" if replaced else "wrote"
    err_console.print(f"{verb} {out} ({count}, {metric} against {x})", highlight=False)


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Run folders, or folders holding runs (e.g. a sweep)."),
    as_json: bool = typer.Option(False, "--json", help="Print the facts as one JSON object."),
) -> None:
    """Compare runs: the config fields that differ between them, and their final and best metrics.

    Example:

        lmkit runs compare runs/baseline runs/post-norm runs/no-rope
    """
    from lmkit.tracking.runs import compare_runs, load_runs

    report = compare_runs(load_runs(runs))
    if as_json:
        print_json(report)
        return
    table = Table(title="Runs compared", title_justify="left")
    table.add_column("")
    for name in report["runs"]:
        table.add_column(name, overflow="fold")
    for field, values in report["differences"].items():
        table.add_row(field, *map(_value, values))
    if not report["differences"]:
        table.add_row("(configs identical)", *["" for _ in report["runs"]])
    table.add_section()
    for fact, values in report["metrics"].items():
        shown = {"status": _status, "time_s": _duration}.get(fact, _value)
        table.add_row(_COMPARE_LABELS.get(fact, fact), *map(shown, values))
    console.print(table)


def train_sweep(
    config: Path | None, overrides: list[str], spec: str, resume: Path | None, until_step: int | None, quiet: bool
) -> None:
    """`lmkit train --sweep`: plan and validate every run, train them one after another, print a summary."""
    from lmkit.errors import InputError
    from lmkit.interrupts import exit_status
    from lmkit.tracking.sweep import plan_sweep, run_sweep

    if resume is not None:
        raise InputError("--sweep starts new runs; it cannot be combined with --resume")
    plan = plan_sweep(config, overrides, spec)
    announce = (lambda line: None) if quiet else (lambda line: err_console.print(line, highlight=False))
    outcomes = run_sweep(config, plan, until_step, show_progress=not quiet, announce=announce)
    rows = [
        [
            str(outcome.run.out_dir),
            _status(outcome.status),
            _value(outcome.result and outcome.result.step),
            _value(outcome.result and outcome.result.val_loss),
            _value(outcome.result and outcome.result.best_val_loss),
        ]
        for outcome in outcomes
    ]
    _print(f"Sweep over {plan[0].key}", ["run folder", "status", "step", "val loss", "best val loss"], rows)
    err_console.print(f"plot the sweep: lmkit runs plot {plan[0].out_dir.parent}", highlight=False)
    if outcomes[-1].status == "interrupted":
        err_console.print(f"interrupted; resume with: lmkit train --resume {outcomes[-1].result.checkpoint}")
        raise typer.Exit(exit_status(outcomes[-1].result.stop_signal or signal.SIGINT))
