"""`lmkit eval`: a checkpoint's loss, perplexity and bits per byte on a text, and its multiple-choice accuracy."""

from __future__ import annotations

from pathlib import Path

import typer

from lmkit.cli.common import device_option, print_json, print_table, threads_option


def eval_command(
    checkpoint: Path = typer.Argument(
        ..., help="A checkpoint written by lmkit train (runs/x/best.pt), or a run folder (its best.pt)."
    ),
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
    device: str = device_option(),
    document_mask: bool = typer.Option(
        False,
        "--document-mask",
        help="Predict each token from its own document only (documents end with <|endoftext|>), as a model "
        "trained with train.document_mask reads.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as one JSON object."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    threads: int | None = threads_option(),
) -> None:
    """Evaluate a checkpoint: loss, perplexity and bits per byte on a text, or multiple-choice accuracy.

    Bits per byte do not depend on the tokenizer, so runs with different vocabularies compare on the
    same text (docs/evaluation.md).

    Example:

        lmkit eval runs/tinystories/best.pt valid.txt --stride 128

        lmkit eval runs/tinystories/best.pt --choices questions.jsonl --json
    """
    from lmkit.evaluation.report import evaluation_report
    from lmkit.threads import apply_threads

    apply_threads(threads)
    report = evaluation_report(
        checkpoint,
        data,
        choices,
        device=device,
        dtype=dtype,
        context=context,
        stride=stride,
        batch_size=batch_size,
        max_tokens=max_tokens,
        workers=workers,
        show_progress=not (quiet or as_json),
        document_mask=document_mask,
    )
    if as_json:
        print_json(report)
        return
    header = {key: report[key] for key in ("checkpoint", "device", "dtype")}
    for part, title in (("data", "Evaluation"), ("choices", "Multiple choice")):
        if part in report:
            print_table(title, {**header, **report[part]})
