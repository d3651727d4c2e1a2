"""`lmkit eval`: a checkpoint's loss, perplexity and bits per byte on a text, and its multiple-choice accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from lmkit.cli.common import print_json, print_table
from lmkit.errors import InputError

if TYPE_CHECKING:  # imported inside the command at run time, so `lmkit --help` does not load torch
    import torch


def eval_command(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by lmkit train (e.g. runs/x/best.pt)."),
    data: Path = typer.Argument(
        None, help="A UTF-8 text file (encoded with the checkpoint's tokenizer) or a .npy token array."
    ),
    choices: Path = typer.Option(
        None, "--choices", help='Multiple-choice questions, JSON Lines: {"context", "choices": [...], "label"}.'
    ),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Windows per forward pass."),
    context: int = typer.Option(None, "--context", help="Tokens per window (default: the model's context length)."),
    stride: int = typer.Option(
        None, "--stride", help="Sliding windows: score this many new tokens per window (default: --context)."
    ),
    max_tokens: int = typer.Option(None, "--max-tokens", help="Stop after scoring this many tokens."),
    workers: int = typer.Option(
        None, "--workers", help="Processes encoding a text DATA (default: all cores on a GPU, 1 on a CPU)."
    ),
    dtype: str = typer.Option(
        "auto",
        "--dtype",
        help="auto (bfloat16 autocast on a GPU that has it, else float32), float32, bfloat16, float16.",
    ),
    device: str = typer.Option("auto", "--device", help="auto (cuda, mps, cpu), cpu, mps, cuda or cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as one JSON object."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Evaluate a checkpoint: loss, perplexity and bits per byte on a text, or multiple-choice accuracy.

    Bits per byte do not depend on the tokenizer, so runs with different vocabularies compare on the
    same text (docs/evaluation.md).

    Example:

        lmkit eval runs/tinystories/best.pt valid.txt --stride 128

        lmkit eval runs/tinystories/best.pt --choices questions.jsonl --json
    """
    from lmkit.evaluation.choices import evaluate_choices, read_questions
    from lmkit.evaluation.perplexity import evaluate
    from lmkit.generate import load_model_and_tokenizer
    from lmkit.training.loop import resolve_autocast_dtype

    if data is None and choices is None:
        raise InputError("nothing to evaluate: give a DATA file (text or .npy) or --choices FILE.jsonl")
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise InputError(f"unknown --dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    questions = read_questions(choices) if choices is not None else None  # bad questions fail before any work
    model, tokenizer = load_model_and_tokenizer(checkpoint, device)
    model_device = model.lm_head.weight.device
    autocast_dtype = resolve_autocast_dtype(dtype, model_device)
    report: dict[str, object] = {
        "checkpoint": str(checkpoint),
        "device": str(model_device),
        "dtype": "float32" if autocast_dtype is None else str(autocast_dtype).removeprefix("torch."),
    }
    if data is not None:
        result = evaluate(
            model,
            tokenizer,
            data,
            context=context,
            stride=stride,
            batch_size=batch_size,
            max_tokens=max_tokens,
            autocast_dtype=autocast_dtype,
            workers=_default_workers(model_device) if workers is None else workers,
            show_progress=not (quiet or as_json),
        )
        window = context or model.config.context_length
        report["data"] = {"file": str(data), "context": window, "stride": stride or window, **result.facts()}
    if questions is not None:
        scores = evaluate_choices(
            model, tokenizer, questions, autocast_dtype=autocast_dtype, show_progress=not (quiet or as_json)
        )
        report["choices"] = {"file": str(choices), **scores}
    if as_json:
        print_json(report)
        return
    for part, title in (("data", "Evaluation"), ("choices", "Multiple choice")):
        if part in report:
            header = {key: report[key] for key in ("checkpoint", "device", "dtype")}
            print_table(title, {**header, **report[part]})


def _default_workers(device: torch.device) -> int:
    """On a CPU the model's forward passes need the cores; on an accelerator encoding can be the bottleneck."""
    import os

    return 1 if device.type == "cpu" else os.cpu_count() or 1
