"""What every command shares: the consoles and the way a report is printed (a rich table or JSON)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()
# soft_wrap: an error is one line however narrow the terminal, so scripts can grep it.
err_console = Console(stderr=True, soft_wrap=True)


def _plain(value: object) -> object:
    """Turn a report value into something json.dumps accepts."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return value


def byte_size(n: int) -> str:
    """Bytes as GB, or MB below one GB (10^9 and 10^6 bytes)."""
    return f"{n / 1e9:,.3f} GB" if n >= 1e9 else f"{n / 1e6:,.3f} MB"


def print_json(facts: Mapping[str, object]) -> None:
    """Print `facts` as one JSON object on stdout, for scripts."""
    print(json.dumps(_plain(facts), ensure_ascii=False))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def print_table(title: str, facts: Mapping[str, object]) -> None:
    """Print a two-column table (name, value) of `facts`."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in facts.items():
        table.add_row(name, _cell(value))
    console.print(table)


_STATUS_STYLE = {
    "finished": "green",
    "running": "cyan",
    "crashed": "yellow",
    "diverged": "red",
    "interrupted": "yellow",
    "stopped": "blue",
}


def run_value(value: Any) -> str:
    """A value in a table of runs: "-" for none, booleans as in the TOML config, numbers short."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"  # as in the TOML config
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def status_cell(status: str) -> str:
    """A run's status, coloured."""
    return f"[{_STATUS_STYLE.get(status, 'default')}]{status}[/]"


def print_rows(title: str, columns: list[str], rows: list[list[str]], drop_first: Sequence[str] = ()) -> None:
    """Print a table of runs, one row each, within the terminal's width: while it would be wider, the columns
    named in `drop_first` are left out in that order; past that, the first column's names are cut short (...).
    No cell wraps onto a second line."""
    table_columns = zip(columns, *rows, strict=True)
    widths = [max(Text.from_markup(cell).cell_len for cell in column) for column in table_columns]
    kept = list(range(len(columns)))
    needed = lambda: sum(widths[number] for number in kept) + 2 * (len(kept) - 1)  # noqa: E731
    for name in drop_first:
        if needed() <= console.width:
            break
        kept.remove(columns.index(name))
    first_width = max(8, widths[0] - max(0, needed() - console.width))
    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True
    )
    for number in kept:
        # Only the first column (names, folders) gives way: numbers and statuses stay whole.
        width = first_width if number == 0 else widths[number]
        table.add_column(columns[number], overflow="ellipsis", no_wrap=True, min_width=width, max_width=width)
    for row in rows:
        table.add_row(*(row[number] for number in kept))
    console.print(table)


def device_option() -> Any:
    """The `--device` option of the commands that run a model."""
    return typer.Option("auto", "--device", help="auto (cuda, mps, cpu), cpu, mps, cuda or cuda:N.")


def inference_dtype_option() -> Any:
    """The `--dtype` option of the commands that sample from a model (generate, chat, serve)."""
    return typer.Option(
        "auto", "--dtype", help="auto (bfloat16 on a GPU that has it, else float32), bfloat16, float16, float32."
    )


def sampling_options(per: str) -> dict[str, Any]:
    """The sampling options `generate` and `chat` share, by parameter name (`per`: what max-new-tokens bounds)."""
    return {
        "max_new_tokens": typer.Option(256, "--max-new-tokens", "-n", help=f"New tokens per {per}, at most."),
        "temperature": typer.Option(0.8, "--temperature", "-t", help="Softmax temperature; 0 is greedy."),
        "top_p": typer.Option(0.95, "--top-p", help="Sample from the smallest set of tokens with probability >= p."),
        "top_k": typer.Option(None, "--top-k", help="Sample among the k most likely tokens only."),
        "seed": typer.Option(None, "--seed", help="Seed for a repeatable sample (default: a fresh one)."),
    }


def threads_option() -> Any:
    """The `--threads N` option every torch-running command takes (None: lmkit.threads chooses)."""
    return typer.Option(
        None,
        "--threads",
        min=1,
        help="CPU threads for torch (default: OMP_NUM_THREADS, else the physical cores other processes leave idle).",
    )


TOKENIZER_HELP = (
    "A tokenizer.json, or a folder holding it or GPT-2's vocab.json + merges.txt, or a .toml naming a tiktoken "
    "rank file; or give --tokenizer twice: vocab.json and merges.txt."
)


def tokenizer_option() -> Any:
    """The `--tokenizer PATH` option (repeatable for a GPT-2 vocab.json + merges.txt); see Tokenizer.load_any."""
    return typer.Option(..., "--tokenizer", help=TOKENIZER_HELP)
