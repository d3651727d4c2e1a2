"""`lmkit quickstart`: the whole path (tokenizer, encoding, training, sampling) on the bundled corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from lmkit.cli.common import console, print_table
from lmkit.quickstart import DEFAULT_STEPS, DEFAULT_VOCAB_SIZE


def _show(stage: str, facts: dict[str, Any]) -> None:
    """Print what a stage of the quickstart did, as it finishes."""
    if stage == "tokenizer":
        console.print(f"[bold]1. tokenizer[/bold]: {facts['vocab size']:,} tokens -> {facts['tokenizer']}")
    elif stage == "encode":
        console.print(
            f"[bold]2. encoded[/bold]: {facts['train tokens']:,} training and {facts['val tokens']:,} validation "
            f"tokens; unigram baseline (entropy of the validation tokens): "
            f"{facts['unigram entropy (nats)']:.3f} nats"
        )
    elif stage == "config":
        console.print(
            f"[bold]3. training[/bold] {facts['parameters']:,} parameters for {facts['steps']:,} steps, "
            f"from {facts['run config']} (as `lmkit train --config` would)"
        )
    elif stage == "train":
        from rich.table import Table

        table = Table("step", "tokens", "time (s)", "train loss", "val loss", title="Learning curve")
        for point in facts["curve"]:
            train_loss = "-" if point["train_loss"] is None else f"{point['train_loss']:.3f}"
            table.add_row(
                f"{point['step']:,}", f"{point['tokens']:,}", f"{point['time_s']:.0f}", train_loss,
                f"{point['val_loss']:.3f}",
            )  # fmt: skip
        console.print(table)
        console.print(
            f"validation loss {facts['val loss']:.3f} nats; unigram baseline {facts['unigram entropy (nats)']:.3f}"
        )
    elif stage == "sample":
        console.print("[bold]4. sample[/bold] (temperature 0.8, top-p 0.95, seed 0):")
        console.print(facts["text"], markup=False, highlight=False)
    elif stage == "interrupted":
        console.print(f"training stopped; continue it with: {facts['resume']}", highlight=False)


def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", help="The run folder to create."),
    steps: int = typer.Option(
        DEFAULT_STEPS, "--steps", min=1, help="Training steps (fewer for a quicker, rougher model)."
    ),
    vocab_size: int = typer.Option(DEFAULT_VOCAB_SIZE, "--vocab-size", help="Tokenizer vocabulary size."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a value of the run config, e.g. --set optim.lr=1e-3 (repeatable)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train a small model on the bundled Tiny Shakespeare end to end, on a CPU, in a few minutes.

    Example:

        lmkit quickstart --out runs/quickstart

    Trains a tokenizer, encodes a train/validation split, writes run.toml and trains from it as lmkit train does.

    Then shows the learning curve, a sample, and the commands to run next on your own corpus.
    """
    from lmkit.quickstart import next_commands, run_quickstart

    result = run_quickstart(
        out, steps=steps, vocab_size=vocab_size, overrides=overrides, progress=not quiet, report=_show
    )
    print_table("Quickstart", {f"{stage} (s)": seconds for stage, seconds in result.seconds.items()})
    console.print("[bold]Next[/bold]:")
    for command in next_commands(result.out_dir):
        console.print(f"  {command}", markup=False, highlight=False)
