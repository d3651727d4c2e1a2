"""`lmkit quickstart`: the whole path (tokenizer, encoding, training, sampling) on the bundled corpus or the
user's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from lmkit.cli.common import console, print_table, threads_option
from lmkit.quickstart import DEFAULT_STEPS


def _say(text: str, **options: Any) -> None:
    """Print a line whole (commands and paths are not wrapped at the terminal's width)."""
    console.print(text, soft_wrap=True, **options)


def _show(stage: str, facts: dict[str, Any]) -> None:
    """Print what a stage of the quickstart did, as it finishes."""
    if stage == "tokenizer":
        _say(
            f"[bold]1. tokenizer[/bold]: a {facts['vocab size']:,}-token byte-level BPE trained on "
            f"{facts['trained on']} ({facts['corpus bytes'] / 1e6:.1f} MB) -> {facts['tokenizer']}"
        )
    elif stage == "encode":
        _say(
            f"[bold]2. encoded[/bold]: {facts['train tokens']:,} training tokens, {facts['val tokens']:,} "
            f"validation tokens (the last tenth of the text)\n"
            f"   unigram baseline: {facts['unigram entropy (nats)']:.3f} nats, the entropy of the validation "
            "tokens (the best loss a model ignoring context can reach)"
        )
    elif stage == "budget":
        _say(
            f"   a step takes {facts['seconds per step']:.2f} s here: {facts['steps']:,} steps fit the "
            f"{facts['minutes']:g}-minute budget"
        )
    elif stage == "config":
        _say(
            f"[bold]3. training[/bold]: {facts['parameters'] / 1e6:.2f}M parameters ({facts['layers']} layers, "
            f"d_model {facts['d_model']}, context {facts['context']}), {facts['steps']:,} steps of "
            f"{facts['tokens per step']:,} tokens\n"
            f"   = lmkit train --config {facts['run config']}"
        )
    elif stage == "train":
        _print_curve(facts["curve"])
        gap = facts["unigram entropy (nats)"] - facts["val loss"]
        side = "below" if gap > 0 else "above"
        _say(
            f"validation loss {facts['val loss']:.3f} nats: {abs(gap):.3f} {side} the unigram baseline "
            f"(a uniform guess scores {facts['uniform']:.3f})"
        )
    elif stage == "sample":
        _say(
            f"[bold]4. sample[/bold] (temperature {facts['temperature']}, top-p {facts['top_p']}, "
            f"seed {facts['seed']}, {facts['max_new_tokens']} tokens):"
        )
        _say(facts["text"], markup=False, highlight=False)
    elif stage == "interrupted":
        _say(f"training stopped; continue it with: {facts['resume']}", highlight=False)


def _print_curve(curve: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="Learning curve", title_justify="left")
    for name in ("step", "tokens", "time (s)", "train loss", "val loss"):
        table.add_column(name, justify="right")
    for point in curve:
        train_loss = "-" if point["train_loss"] is None else f"{point['train_loss']:.3f}"
        table.add_row(
            f"{point['step']:,}", f"{point['tokens']:,}", f"{point['time_s']:.0f}", train_loss,
            f"{point['val_loss']:.3f}",
        )  # fmt: skip
    console.print(table)


def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", help="The run folder to create."),
    corpus: list[str] = typer.Option(
        [],
        "--corpus",
        help="Train on this text instead of Tiny Shakespeare: a file, folder or glob, in any format the tokenizer "
        "reads (.txt, .jsonl, .parquet, also .gz/.zst); repeatable.",
    ),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help=f"Training steps (default: {DEFAULT_STEPS}, or what fits --minutes)."
    ),
    minutes: float | None = typer.Option(
        None, "--minutes", help="A time budget: train for as many steps as fit (default for --corpus: 3)."
    ),
    vocab_size: int | None = typer.Option(
        None, "--vocab-size", help="Tokenizer vocabulary size (default: 2000, or sized to --corpus)."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a value of the run config, e.g. --set optim.lr=1e-3 (repeatable)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    threads: int | None = threads_option(),
) -> None:
    """Train a small model end to end on a CPU in a few minutes: on the bundled Tiny Shakespeare, or on your
    own text with --corpus.

    Examples:

        lmkit quickstart --out runs/quickstart
        lmkit quickstart --corpus my-notes/ --minutes 10 --out runs/notes

    Trains a tokenizer, encodes a train/validation split, writes run.toml and trains from it as lmkit train does.

    Then shows the learning curve, a sample, and the commands to run next on your own corpus.
    """
    from lmkit.quickstart import next_commands, run_quickstart

    overrides = [*overrides, f"train.threads={threads}"] if threads is not None else overrides
    result = run_quickstart(
        out,
        corpus=corpus,
        steps=steps,
        minutes=minutes,
        vocab_size=vocab_size,
        overrides=overrides,
        progress=not quiet,
        report=_show,
    )
    print_table("Time", {f"{stage} (s)": round(seconds, 1) for stage, seconds in result.seconds.items()})
    _say("[bold]Next[/bold]:")
    for command in next_commands(result.out_dir, own_corpus=bool(corpus)):
        _say(f"  {command}", markup=False, highlight=False)
