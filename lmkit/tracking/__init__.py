"""Experiment tracking: the runs `lmkit train` leaves on disk, listed, compared and plotted, and sweeps.

See docs/experiments.md. `runs` reads run folders and judges their status, `plot` turns them into curves,
`sweep` trains one run per value of a config key.
"""

from lmkit.tracking.plot import Series, curves, draw_curves, make_figure, plot_runs
from lmkit.tracking.runs import Run, compare_runs, config_differences, list_runs, load_runs, run_status, run_summary

__all__ = [
    "Run",
    "Series",
    "compare_runs",
    "config_differences",
    "curves",
    "draw_curves",
    "list_runs",
    "make_figure",
    "load_runs",
    "plot_runs",
    "run_status",
    "run_summary",
]
