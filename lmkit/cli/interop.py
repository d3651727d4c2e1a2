"""`lmkit export hf` and `lmkit import hf`: models to and from Hugging Face Llama folders."""

from __future__ import annotations

from pathlib import Path

import typer

from lmkit.cli.common import TOKENIZER_HELP, print_json, print_table

export_app = typer.Typer(no_args_is_help=True, help="Write a checkpoint in another ecosystem's format.")
import_app = typer.Typer(no_args_is_help=True, help="Read a model from another ecosystem into an lmkit checkpoint.")


@export_app.command(name="hf")
def export_hf(
    checkpoint: Path = typer.Argument(
        ..., help="A checkpoint from lmkit train (or lmkit import hf), or a run folder (its best.pt)."
    ),
    out: Path = typer.Option(..., "--out", help="The folder to write (new, or empty; see --force)."),
    dtype: str = typer.Option("float32", "--dtype", help="Weights as float32, bfloat16 or float16."),
    max_shard_mb: int = typer.Option(5000, "--max-shard-mb", help="Split the weights into files of at most this."),
    force: bool = typer.Option(False, "--force", help="Write into a folder that is not empty."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as one JSON object."),
) -> None:
    """Export a checkpoint as a Hugging Face LlamaForCausalLM folder (weights, config, tokenizer).

    transformers' AutoModelForCausalLM and AutoTokenizer load the folder and compute the same logits and ids.

    Example:

        lmkit export hf runs/tinystories/best.pt --out tinystories-hf --dtype bfloat16
    """
    from lmkit.interop.hf import export_hf as run_export

    facts = run_export(checkpoint, out, dtype=dtype, force=force, max_shard_bytes=max_shard_mb * 10**6, progress=True)
    if as_json:
        print_json(facts)
    else:
        lists = {key: ", ".join(facts[key]) for key in ("weight_files", "files")}
        print_table(f"Exported {checkpoint} to {out}", {**facts, **lists})


@import_app.command(name="hf")
def import_hf(
    folder: Path = typer.Argument(..., help="A local Hugging Face Llama folder: config.json, safetensors weights."),
    out: Path = typer.Option(..., "--out", help="The checkpoint file to write."),
    context_length: int = typer.Option(
        None, "--context-length", min=1, help="Use this context instead of max_position_embeddings."
    ),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
    tokenizer: list[Path] = typer.Option(
        [], "--tokenizer", help=f"Use this tokenizer instead of the folder's tokenizer.json. {TOKENIZER_HELP}"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print what was read as one JSON object."),
) -> None:
    """Import a local Hugging Face Llama folder as an lmkit checkpoint (generate, ckpt info, train.init_from).

    Hub ids are not downloaded: fetch the folder first (huggingface-cli download ID --local-dir DIR).

    Example:

        lmkit import hf ./my-llama --out my-llama.pt --context-length 2048

    Llama 3 style tokenizers (its pattern, ignore_merges, a BOS post-processor) are read as they are published.
    """
    from lmkit.interop.hf import import_hf as run_import

    facts = run_import(
        folder, out, force=force, context_length=context_length, progress=True, tokenizer=tokenizer or None
    )
    if as_json:
        print_json(facts)
    else:
        model = facts.pop("model")
        print_table(f"Imported {folder} to {out}", {**facts, **{f"model.{k}": v for k, v in model.items()}})
