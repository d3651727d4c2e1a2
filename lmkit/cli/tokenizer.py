"""`lmkit tokenizer ...`: train a byte-level BPE tokenizer, encode a corpus, inspect a tokenizer."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import typer

from lmkit.cli.common import TOKENIZER_HELP, print_json, print_table, tokenizer_option
from lmkit.threads import usable_cpus

app = typer.Typer(no_args_is_help=True, help="Train, apply and inspect byte-level BPE tokenizers.")

_CORPUS_HELP = (
    "Files, folders (their files, sorted, recursively), globs, or - for standard input: text (.txt), JSON Lines "
    "(.jsonl, .json), Parquet (.parquet), each also as .gz or .zst."
)
_FORMAT_HELP = "Read every input as txt, jsonl or parquet (optionally .gz or .zst, e.g. jsonl.zst), whatever its name."
_TEXT_FIELD_HELP = "The JSON field or Parquet column holding the text."
_PATTERN_HELP = (
    "How text is cut into pre-tokens before BPE: gpt2 (GPT-2's), gpt4 (cl100k_base: digits in groups of 3, "
    "contractions in any case), o200k (o200k_base), llama3 (Llama 3's), or a regex of your own."
)
_SEPARATOR_HELP = (
    "Put between documents (records, rows, files): default the first special token; --separator '' for none."
)


@app.command()
def train(
    corpus: list[str] = typer.Argument(..., help=_CORPUS_HELP, show_default=False),
    vocab_size: int = typer.Option(
        ..., "--vocab-size", help="Tokens in the vocabulary: specials + 256 bytes + merges."
    ),
    special_token: list[str] = typer.Option(
        [], "--special-token", help="A special token, e.g. '<|endoftext|>'; repeat for several."
    ),
    out: Path = typer.Option(Path("tokenizer.json"), "--out", help="Where to write the tokenizer JSON file."),
    workers: int | None = typer.Option(None, "--workers", help="Processes for pre-tokenizing (default: all cores)."),
    input_format: str | None = typer.Option(None, "--format", help=_FORMAT_HELP),
    text_field: str = typer.Option("text", "--text-field", help=_TEXT_FIELD_HELP),
    separator: str | None = typer.Option(None, "--separator", help=_SEPARATOR_HELP, show_default=False),
    pattern: str = typer.Option("gpt2", "--pattern", help=_PATTERN_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Train a byte-level BPE tokenizer on a text corpus and write it as one tokenizer.json file.

    Example: lmkit tokenizer train corpus.txt --vocab-size 10000 --special-token "<|endoftext|>" --out tok.json

    Many files, JSON Lines or Parquet, compressed or not: documents are joined by the separator.

    Example: lmkit tokenizer train "shards/*.jsonl.zst" --vocab-size 32000 --special-token "<|endoftext|>"

    Digits in groups of three and contractions in any case, as GPT-4's tokenizer cuts them:

    Example: lmkit tokenizer train corpus.txt --vocab-size 32000 --pattern gpt4
    """
    from lmkit.fileio import check_output_path
    from lmkit.tokenizer.formats import Layout, save_tokenizer
    from lmkit.tokenizer.pretokenize import check_pattern
    from lmkit.tokenizer.sources import find_corpus
    from lmkit.tokenizer.train import train_bpe_with_stats, training_summary

    check_output_path(out)
    pattern = check_pattern(pattern)
    start = time.perf_counter()
    source = find_corpus(corpus, input_format=input_format, text_field=text_field, separator=separator)
    trained = train_bpe_with_stats(
        source, vocab_size, special_token, num_workers=workers, progress=True, pattern=pattern
    )
    save_tokenizer(out, trained.vocab, trained.merges, trained.special_tokens, Layout(pattern))
    facts = {"output": str(out), **training_summary(trained, time.perf_counter() - start)}
    if json_output:
        print_json(facts)
    else:
        longest = _token_lines(f"'{t}'" for t in facts["longest tokens"])
        print_table(
            "Tokenizer trained", {**facts, "longest tokens": longest, "special tokens": ", ".join(special_token)}
        )


@app.command()
def encode(
    corpus: list[str] | None = typer.Argument(None, help=f"{_CORPUS_HELP} Or give --text.", show_default=False),
    tokenizer: list[Path] = tokenizer_option(),
    out: Path | None = typer.Option(
        None, "--out", help="The .npy file to write; with --val-fraction, OUT.train.npy and OUT.val.npy instead."
    ),
    workers: int | None = typer.Option(None, "--workers", help="Processes encoding in parallel (default: all cores)."),
    val_fraction: float = typer.Option(
        0.0, "--val-fraction", help="Share of the documents (split at the first special token) kept for validation."
    ),
    input_format: str | None = typer.Option(None, "--format", help=_FORMAT_HELP),
    text_field: str = typer.Option("text", "--text-field", help=_TEXT_FIELD_HELP),
    separator: str | None = typer.Option(None, "--separator", help=_SEPARATOR_HELP, show_default=False),
    text: str | None = typer.Option(None, "--text", help="Encode this string and print its ids instead of a file."),
    show: bool = typer.Option(False, "--show", help="With --text: print each token beside its id."),
    json_output: bool = typer.Option(False, "--json", help="Print the summary (or the ids) as one JSON object."),
) -> None:
    """Encode a corpus into a .npy array of token ids (uint16 or uint32), or a --text string into ids.

    Example: lmkit tokenizer encode corpus.txt --tokenizer tokenizer.json --out tokens.npy --val-fraction 0.01

    That writes tokens.train.npy and tokens.val.npy. To see how a string is cut into tokens:

    Example: lmkit tokenizer encode --text "Hello world" --tokenizer tokenizer.json --show
    """

    from lmkit.errors import InputError
    from lmkit.tokenizer.tokenizer import Tokenizer

    if not corpus and text is None:
        raise InputError('nothing to encode: give a CORPUS file (with --out) or --text "some text"')
    if corpus and text is not None:
        raise InputError("give either a CORPUS file to encode (with --out) or --text, not both")
    if corpus and out is None:
        raise InputError("--out is required to encode a corpus, e.g. --out tokens.npy")
    tok = Tokenizer.load_any(tokenizer)
    if text is not None:
        _print_ids(tok, text, show, json_output)
        return
    from lmkit.tokenizer.encode import encode_file
    from lmkit.tokenizer.sources import find_corpus

    workers = workers if workers is not None else usable_cpus()
    source = find_corpus(corpus, input_format=input_format, text_field=text_field, separator=separator)
    summary = encode_file(source, tok, out, workers=workers, val_fraction=val_fraction)
    if json_output:
        print_json(summary)
    else:
        print_table("Corpus encoded", summary)


@app.command()
def decode(
    ids: list[int] = typer.Argument(..., help="Token ids, e.g. 15496 995."),
    tokenizer: list[Path] = tokenizer_option(),
) -> None:
    """Decode token ids back into text (bytes that are not valid UTF-8 print as U+FFFD).

    Example: lmkit tokenizer decode 15496 995 --tokenizer gpt2/  (a folder with GPT-2's vocab.json + merges.txt)
    """
    from lmkit.tokenizer.tokenizer import Tokenizer

    print(Tokenizer.load_any(tokenizer).decode(ids))


def _token_lines(cells: Iterable[str]) -> str:
    """Tokens for a table cell, one per line: tokens hold spaces, so a cell wrapped at a space would cut one."""
    return "\n".join(cells)


def _print_ids(tok: object, text: str, show: bool, json_output: bool) -> None:
    """Print the ids of `text`: a list, a table of (id, token) with --show, or JSON."""
    from lmkit.tokenizer.train import display_token

    ids = tok.encode(text)
    tokens = [display_token(tok.vocab[i]) for i in ids]
    if json_output:
        print_json({"ids": ids, "tokens": tokens} if show else {"ids": ids})
    elif show:
        from rich.table import Table

        from lmkit.cli.common import console

        table = Table("id", "token", title=f"{len(ids)} tokens", title_justify="left")
        for token_id, token in zip(ids, tokens, strict=True):
            table.add_row(str(token_id), f"'{token}'")
        console.print(table)
    else:
        print(ids)


@app.command(name="inspect")
def inspect_tokenizer(
    paths: list[Path] = typer.Argument(..., help=TOKENIZER_HELP.replace("give --tokenizer twice: ", "two files: ")),
    sample: Path | None = typer.Option(
        None, "--sample", help="A text file to encode: bytes per token, tokens/s and the most frequent tokens."
    ),
    top: int = typer.Option(10, "--top", min=1, help="How many longest and most frequent tokens to list."),
    json_output: bool = typer.Option(False, "--json", help="Print the facts as one JSON object."),
) -> None:
    """Report a tokenizer: vocabulary size, merges, special tokens, longest tokens; with --sample, how it encodes.

    Example: lmkit tokenizer inspect tokenizer.json --sample corpus.txt --top 20
    """
    from lmkit.tokenizer.report import describe_sample, describe_tokenizer
    from lmkit.tokenizer.tokenizer import Tokenizer

    tok = Tokenizer.load_any(paths)
    facts = describe_tokenizer(tok, top)
    if sample is not None:
        facts.update(describe_sample(tok, sample, top))
    if json_output:
        print_json(facts)
        return
    readable = dict(facts)
    readable["special tokens"] = ", ".join(facts["special tokens"])
    readable["longest tokens"] = _token_lines(f"'{t}'" for t in facts["longest tokens"])
    if sample is not None:
        frequent = facts["most frequent tokens"].items()
        readable["most frequent tokens"] = _token_lines(f"'{t}' {n:,}" for t, n in frequent)
    print_table(f"Tokenizer {' + '.join(map(str, paths))}", readable)
