"""Learning curves: the series to draw (a pure function of the runs) and the drawing (matplotlib, optional).

`curves` decides every number that ends up on the plot, so it can be checked exactly; `draw_curves` only
draws what it is handed. matplotlib is the optional extra `lmkit[plot]` and is imported only to draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmkit.errors import InputError
from lmkit.fileio import atomic_write, check_output_path
from lmkit.tracking.runs import Run, load_runs, run_status

# metric name -> (event, field in metrics.jsonl, axis label)
METRICS = {
    "val_loss": ("eval", "val_loss", "validation loss"),
    "val_bpb": ("eval", "val_bpb", "validation bits per byte"),
    "train_loss": ("train", "loss", "train loss"),
    "lr": ("train", "lr", "learning rate"),
    "grad_norm": ("train", "grad_norm", "gradient norm (before clipping)"),
}
# --x choice -> (field in metrics.jsonl, axis label)
X_AXES = {"steps": ("step", "step"), "tokens": ("tokens", "tokens"), "time": ("time_s", "training time (s)")}
IMAGE_FORMATS = ("png", "svg", "pdf")


@dataclass(frozen=True)
class Series:
    """One run's curve: points in logging order, and whether the run diverged (drawn with an end marker)."""

    label: str
    x: list[float]
    y: list[float]
    diverged: bool


def check_choices(metric: str, x: str) -> None:
    """InputError unless `metric` and `x` are among METRICS and X_AXES."""
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if x not in X_AXES:
        raise InputError(f"unknown x axis {x!r}; choose one of {', '.join(X_AXES)}")


def smoothed(values: list[float], weight: float) -> list[float]:
    """An exponential moving average of `values` (each point `weight` of the average before it and 1 - weight
    of its own value), corrected for its start at zero as TensorBoard's smoothing is; weight 0 leaves them."""
    average, out = 0.0, []
    for number, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**number))
    return out


def curves(
    runs: list[Run], metric: str = "val_loss", x: str = "steps", now: float | None = None, smooth: float = 0.0
) -> list[Series]:
    """Each run's `metric` against `x` (steps, tokens or time), one Series per run in order, smoothed by
    `smooth` (see `smoothed`).

    A point is a metrics line of the metric's event with both fields; a non-finite value cannot be drawn
    and is left out (its run is diverged, which the Series says).
    """
    if not 0 <= smooth < 1:
        raise InputError(f"--smooth must be at least 0 and below 1 (0.9 averages about 10 points), got {smooth}")
    check_choices(metric, x)
    event, field, _ = METRICS[metric]
    x_field = X_AXES[x][0]
    series = []
    for run in runs:
        points = [
            (record[x_field], record[field])
            for record in run.records
            if record.get("event") == event and x_field in record and field in record
        ]
        points = [(a, b) for a, b in points if math.isfinite(a) and math.isfinite(b)]
        series.append(
            Series(
                label=run.name,
                x=[a for a, _ in points],
                y=smoothed([b for _, b in points], smooth),
                diverged=run_status(run, now) == "diverged",
            )
        )
    return series


def _image_format(out: Path) -> str:
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in IMAGE_FORMATS:
        raise InputError(f"--out {out}: give a file ending in .{', .'.join(IMAGE_FORMATS)}")
    return suffix


def make_figure(series: list[Series], metric: str, x: str, log_y: bool = False) -> Any:
    """A matplotlib Figure (Agg backend) overlaying the series; InputError saying how to install matplotlib.

    A diverged run's label says so and its last point carries a cross.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError('plotting needs matplotlib: pip install "lmkit[plot]"') from None
    from matplotlib.ticker import FuncFormatter

    figure = Figure(figsize=(8, 5), layout="constrained")
    FigureCanvasAgg(figure)  # the Agg backend, without touching pyplot's global state
    axes = figure.add_subplot()
    # Evaluations are few: each is marked, as is a lone point (one evaluation so far), which draws no line.
    evaluated = METRICS[metric][0] == "eval"
    for curve in series:
        label = f"{curve.label} (diverged)" if curve.diverged else curve.label
        marker = "o" if evaluated or len(curve.x) == 1 else None
        (line,) = axes.plot(curve.x, curve.y, label=label, marker=marker, markersize=4)
        if curve.diverged and curve.x:
            axes.plot(curve.x[-1:], curve.y[-1:], marker="x", markersize=12, color=line.get_color(), linestyle="")
    axes.set_title(f"{METRICS[metric][2]} against {X_AXES[x][1]}")
    axes.set_xlabel(X_AXES[x][1])
    axes.set_ylabel(METRICS[metric][2])
    if log_y:
        axes.set_yscale("log")
        # Losses span less than a decade: label the minor ticks (4, 5, 6...) as plain numbers, not as 5x10^0.
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        axes.yaxis.set_major_formatter(plain)
        axes.yaxis.set_minor_formatter(plain)
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def draw_curves(series: list[Series], metric: str, x: str, out: str | Path, log_y: bool = False) -> None:
    """Draw the series (see make_figure) into the image `out`: PNG, SVG or PDF by its suffix."""
    out = check_output_path(out)
    image_format = _image_format(out)
    figure = make_figure(series, metric, x, log_y)
    with atomic_write(out) as handle:
        figure.savefig(handle, format=image_format)


def default_plot_path(paths: list[str | Path], metric: str, x: str) -> Path:
    """Where `lmkit runs plot` draws without --out: `METRIC-X.png` in the first folder given (beside the runs,
    never over a file in the current folder)."""
    return Path(paths[0]) / f"{metric}-{x}.png"


def plot_runs(
    paths: list[str | Path], metric: str, x: str, out: str | Path, log_y: bool = False, smooth: float = 0.0
) -> list[Series]:
    """What `lmkit runs plot` does: read the runs, compute their curves, draw them into `out`; returns the curves."""
    _image_format(check_output_path(out))
    check_choices(metric, x)
    series = curves(load_runs(paths), metric, x, smooth=smooth)
    if not any(curve.x for curve in series):
        raise InputError(f"these runs have logged no {metric} yet")
    draw_curves(series, metric, x, out, log_y)
    return series
