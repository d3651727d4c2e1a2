"""`lmkit tokenizer ...`: train a byte-level BPE tokenizer, encode a corpus, inspect a tokenizer."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from lmkit.cli.common import print_json, print_table

app = typer.Typer(no_args_is_help=True, help="Train, apply and inspect byte-level BPE tokenizers.")


@app.command()
def train(
    corpus: Path = typer.Argument(..., help="The UTF-8 text file to train on."),
    vocab_size: int = typer.Option(
        ..., "--vocab-size", help="Tokens in the vocabulary: specials + 256 bytes + merges."
    ),
    special_token: list[str] = typer.Option(
        [], "--special-token", help="A special token, e.g. '<|endoftext|>'; repeat for several."
    ),
    out: Path = typer.Option(Path("tokenizer.json"), "--out", help="Where to write the tokenizer JSON file."),
    workers: int | None = typer.Option(None, "--workers", help="Processes for pre-tokenizing (default: all cores)."),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Train a byte-level BPE tokenizer on a text corpus and write it as one tokenizer.json file.

    Example: lmkit tokenizer train corpus.txt --vocab-size 10000 --special-token "<|endoftext|>" --out tok.json
    """
    from lmkit.fileio import check_output_path
    from lmkit.tokenizer.formats import save_tokenizer
    from lmkit.tokenizer.train import train_bpe_with_stats, training_summary

    check_output_path(out)
    start = time.perf_counter()
    trained = train_bpe_with_stats(corpus, vocab_size, special_token, num_workers=workers, progress=True)
    save_tokenizer(out, trained.vocab, trained.merges, trained.special_tokens)
    facts = {"output": str(out), **training_summary(trained, time.perf_counter() - start)}
    if json_output:
        print_json(facts)
    else:
        longest = "  ".join(f"'{t}'" for t in facts["longest tokens"])
        print_table(
            "Tokenizer trained", {**facts, "longest tokens": longest, "special tokens": ", ".join(special_token)}
        )
