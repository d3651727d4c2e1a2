"""What `lmkit eval` does: load a checkpoint, score a text or token array and/or multiple-choice questions,
and gather the figures into one report."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lmkit.errors import InputError
from lmkit.evaluation.choices import evaluate_choices, read_questions
from lmkit.evaluation.perplexity import evaluate
from lmkit.threads import usable_cpus

DTYPES = ("auto", "float32", "bfloat16", "float16")


def encode_workers(device: torch.device) -> int:
    """Processes to encode a text: on a CPU the model's forward passes need the cores (1); on an accelerator
    encoding in one process could keep the model waiting (all cores)."""
    return 1 if device.type == "cpu" else usable_cpus()


def evaluation_report(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike | None = None,
    choices: str | os.PathLike | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    workers: int | None = None,
    show_progress: bool = False,
    document_mask: bool = False,
) -> dict[str, object]:
    """The checkpoint, device and dtype, then under "data" the figures of `evaluate` on `data` and under
    "choices" those of `evaluate_choices` on the questions in `choices` (each when given).

    `dtype` "auto" autocasts to bfloat16 on a GPU with native bfloat16 and keeps float32 elsewhere (as
    generation does: lmkit.device.resolve_inference_dtype); `workers` defaults to
    encode_workers. InputError for bad input of any kind, before the model is loaded where it can be.
    """
    from lmkit.checkpoint import load_model_and_tokenizer
    from lmkit.device import resolve_inference_dtype

    if data is None and choices is None:
        raise InputError("nothing to evaluate: give a DATA file (text or .npy) or --choices FILE.jsonl")
    if dtype not in DTYPES:
        raise InputError(f"unknown --dtype {dtype!r}; use {', '.join(DTYPES)}")
    questions = read_questions(choices) if choices is not None else None
    model, tokenizer = load_model_and_tokenizer(checkpoint, device)
    model_device = model.lm_head.weight.device
    compute_dtype = resolve_inference_dtype(dtype, model_device)
    autocast_dtype = None if compute_dtype == torch.float32 else compute_dtype
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
            workers=encode_workers(model_device) if workers is None else workers,
            show_progress=show_progress,
            document_mask=document_mask,
        )
        window = context or model.config.context_length
        facts = {"file": str(data), "context": window, "stride": stride or window, "document mask": document_mask}
        report["data"] = {**facts, **result.facts()}
    if questions is not None:
        scores = evaluate_choices(
            model, tokenizer, questions, autocast_dtype=autocast_dtype, show_progress=show_progress
        )
        report["choices"] = {"file": str(Path(choices)), **scores}
    return report
