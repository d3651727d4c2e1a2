"""`lmkit train`: train a model from a TOML run config, or resume a run from its checkpoint."""

from __future__ import annotations

import signal
from pathlib import Path

import typer

from lmkit.cli.common import err_console, print_rows, print_table, run_value, status_cell, threads_option


def train(
    config: Path = typer.Option(None, "--config", "-c", help="TOML run config (data, model, optim and train tables)."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override one config value, e.g. --set optim.lr=3e-4 (repeatable)."
    ),
    resume: Path = typer.Option(
        None,
        "--resume",
        help="Continue exactly from this checkpoint (last.pt, or a run folder: its last.pt); one holding weights "
        "only (lmkit import hf) starts a new run from them.",
    ),
    until_step: int = typer.Option(
        None, "--until-step", help="Stop after this step with a checkpoint, to resume later."
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress bar or log lines (metrics.jsonl is still written)."
    ),
    sweep: str = typer.Option(
        None, "--sweep", help="One run per value, in OUT_DIR/KEY=VALUE, e.g. --sweep optim.lr=1e-4,3e-4,1e-3."
    ),
    nproc: int = typer.Option(
        1, "--nproc", min=1, help="Train on N processes of this machine, one per GPU, through torchrun."
    ),
    threads: int | None = threads_option(),
) -> None:
    """Train a language model from a TOML run config (or resume a run).

    Example:

        lmkit train --config examples/tinystories-cpu.toml --set optim.lr=1e-3

    Checkpoints (last.pt, best.pt), metrics.jsonl and the resolved config.toml go to train.out_dir.
    Ctrl-C (or SIGTERM, as schedulers send) finishes the current step, saves last.pt and exits 130
    (143); continue with `lmkit train --resume OUT_DIR/last.pt`. One run at a time may use an out_dir.
    A sweep trains one run per value, one after another:
    `lmkit train --config run.toml --sweep optim.lr=1e-4,3e-4,1e-3` (see docs/experiments.md).
    On 4 GPUs: `lmkit train --nproc 4 --config run.toml` (train.batch_size is the global batch; several
    nodes: torchrun, see docs/distributed.md).

    On a terminal a progress bar shows the run; otherwise (nohup, CI, > train.log) one plain line per
    train.log_every steps and per evaluation. --threads N is --set train.threads=N.
    """
    overrides = [*overrides, f"train.threads={threads}"] if threads is not None else overrides
    if nproc > 1:
        return _launch(nproc, config, overrides, resume, until_step, quiet, sweep)
    if sweep is not None:
        return _sweep(config, overrides, sweep, resume, until_step, quiet)
    from lmkit.interrupts import exit_status, ignore_stop_signals
    from lmkit.tracking.wandb_log import wandb_sink
    from lmkit.training.distributed import Distributed
    from lmkit.training.loop import train_from_files

    result = train_from_files(config, overrides, resume, until_step, show_progress=not quiet, sinks=[wandb_sink])
    if result.interrupted:  # by Ctrl-C or SIGTERM: last.pt is saved, and more signals would only cut the exit short
        ignore_stop_signals()
    status = exit_status(result.stop_signal) if result.interrupted and result.step < result.total_steps else 0
    if not Distributed.from_env().is_main:  # under torchrun rank 0 alone reports
        raise typer.Exit(status)
    if result.steps_run == 0 and result.step == result.total_steps:
        err_console.print(
            f"nothing to do: the run ended at step {result.step}; to train on, raise its length (--set train.steps=N)",
            highlight=False,
        )
        return
    print_table(
        "Training",
        {
            "step": f"{result.step:,} / {result.total_steps:,}",
            "tokens seen": result.tokens_seen,
            "train loss": result.train_loss,
            "val loss": result.val_loss,
            "best val loss": result.best_val_loss,
            "tokens/s": result.tokens_per_s,
            **({} if result.mfu is None else {"MFU": f"{result.mfu:.1%}"}),  # left out where no peak is known
            "parameters per process": result.parameters_per_process,
            "time (s)": result.elapsed_s,
            "CPU threads": result.threads,
            "checkpoint": str(result.checkpoint),
        },
    )
    if result.step < result.total_steps:
        reason = "interrupted" if result.interrupted else "stopped"
        err_console.print(
            f"{reason} at step {result.step}; resume with: lmkit train --resume {result.checkpoint}", highlight=False
        )
        raise typer.Exit(status)


def _sweep(
    config: Path | None, overrides: list[str], spec: str, resume: Path | None, until_step: int | None, quiet: bool
) -> None:
    """`lmkit train --sweep`: plan and validate every run, train them one after another, print a summary."""
    from lmkit.errors import InputError
    from lmkit.interrupts import exit_status
    from lmkit.tracking.sweep import plan_sweep, run_sweep
    from lmkit.tracking.wandb_log import wandb_sink

    if resume is not None:
        raise InputError("--sweep starts new runs; it cannot be combined with --resume")
    plan = plan_sweep(config, overrides, spec)
    announce = (lambda line: None) if quiet else (lambda line: err_console.print(line, highlight=False))
    outcomes = run_sweep(config, plan, until_step, show_progress=not quiet, announce=announce, sinks=[wandb_sink])
    rows = [
        [
            str(outcome.run.out_dir),
            status_cell(outcome.status),
            run_value(outcome.result and outcome.result.step),
            run_value(outcome.result and outcome.result.val_loss),
            run_value(outcome.result and outcome.result.best_val_loss),
        ]
        for outcome in outcomes
    ]
    print_rows(f"Sweep over {plan[0].key}", ["run folder", "status", "step", "val loss", "best val loss"], rows)
    err_console.print(f"plot the sweep: lmkit runs plot {plan[0].out_dir.parent}", highlight=False)
    if outcomes[-1].status == "interrupted":
        err_console.print(f"interrupted; resume with: lmkit train --resume {outcomes[-1].result.checkpoint}")
        raise typer.Exit(exit_status(outcomes[-1].result.stop_signal or signal.SIGINT))


def _launch(
    nproc: int,
    config: Path | None,
    overrides: list[str],
    resume: Path | None,
    until_step: int | None,
    quiet: bool,
    sweep: str | None,
) -> None:
    """Check the run's config, then become torchrun running this command (without --nproc) on `nproc` processes."""
    from lmkit.errors import InputError
    from lmkit.training.distributed import launch
    from lmkit.training.loop import resolve_run

    if sweep is not None:
        raise InputError("--nproc cannot be combined with --sweep; train each value with --set instead")
    run_config, _ = resolve_run(config, overrides, resume)
    args = [f"--set={override}" for override in overrides]
    args += [f"--config={config}"] if config is not None else []
    args += [f"--resume={resume}"] if resume is not None else []
    args += [f"--until-step={until_step}"] if until_step is not None else []
    launch(nproc, run_config.train.batch_size, args + (["--quiet"] if quiet else []))
