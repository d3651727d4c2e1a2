"""`lmkit ckpt ...`: look inside checkpoints."""

from __future__ import annotations

from pathlib import Path

import typer

from lmkit.cli.common import print_json, print_table

app = typer.Typer(no_args_is_help=True, help="Inspect checkpoints written by lmkit train.")


@app.command()
def info(
    checkpoint: Path = typer.Argument(..., help="A checkpoint file (last.pt, best.pt), or a run folder (its best.pt)."),
    as_json: bool = typer.Option(False, "--json", help="Print the facts as one JSON object."),
) -> None:
    """Show what a checkpoint holds: model, step, losses, configs, tokenizer, version.

    Example:

        lmkit ckpt info runs/tinystories/last.pt --json
    """
    from lmkit.checkpoint import checkpoint_facts

    facts = checkpoint_facts(checkpoint)
    if as_json:
        print_json(facts)
    else:
        print_table(f"Checkpoint {checkpoint}", facts)
