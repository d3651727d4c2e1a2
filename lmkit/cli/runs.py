"""`lmkit runs ...`: list, compare and plot the runs `lmkit train` wrote."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from lmkit.cli.common import console, err_console, print_json, print_rows, run_value, status_cell

app = typer.Typer(no_args_is_help=True, help="List, compare and plot training runs.")



# The table shows time as h:mm:ss; its label says so (--json keeps time_s, in seconds).
_COMPARE_LABELS = {"time_s": "time (h:mm:ss)"}


def _short(count: int) -> str:
    for suffix, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{suffix}"
    return str(count)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


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
            run_value(s["best_val_loss"]),
            _duration(s["time_s"]),
            status_cell(s["status"]),
        ]
        for s in summaries
    ]
    if any(s["best_val_bpb"] is not None for s in summaries):  # runs logged before lmkit recorded bpb have none
        columns.insert(6, "best bpb")
        for row, s in zip(rows, summaries, strict=True):
            row.insert(6, run_value(s["best_val_bpb"]))
    # On a narrow terminal the run names stay whole as long as leaving out the less needed columns allows.
    print_rows(f"Runs in {directory}", columns, rows, drop_first=("shape", "tokens", "time", "params"))


@app.command()
def plot(
    runs: list[Path] = typer.Argument(..., help="Run folders, or folders holding runs (e.g. a sweep)."),
    x: str = typer.Option("steps", "--x", help="The x axis: steps, tokens or time."),
    metric: str = typer.Option("val_loss", "--metric", help="val_loss, val_bpb, train_loss, lr or grad_norm."),
    log: bool = typer.Option(False, "--log", help="Logarithmic y axis."),
    smooth: float = typer.Option(
        0.0, "--smooth", help="Smooth the curves by an exponential moving average of this weight (0.9: ~10 points)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="The image to write (.png, .svg or .pdf); default: RUNS/METRIC-X.png."
    ),
) -> None:
    r"""Overlay the runs' learning curves in one image; diverged runs are marked with a cross.

    Needs matplotlib: pip install "lmkit\[plot]".

    Example:

        lmkit runs plot runs/lr-sweep --x tokens --metric val_loss --log --out lr-sweep.png
        lmkit runs plot runs/lr-sweep --metric train_loss --smooth 0.9
    """
    from lmkit.tracking.plot import default_plot_path, plot_runs

    out = out if out is not None else default_plot_path(runs, metric, x)
    replaced = out.exists()
    series = plot_runs(runs, metric, x, out, log, smooth)
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
        table.add_row(field, *map(run_value, values))
    if not report["differences"]:
        table.add_row("(configs identical)", *["" for _ in report["runs"]])
    table.add_section()
    for fact, values in report["metrics"].items():
        shown = {"status": status_cell, "time_s": _duration}.get(fact, run_value)
        table.add_row(_COMPARE_LABELS.get(fact, fact), *map(shown, values))
    console.print(table)
