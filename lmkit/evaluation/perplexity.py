"""Scoring a text or a token array with a trained model: loss, perplexity and bits per byte.

    from lmkit.evaluation import evaluate
    from lmkit.generate import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("runs/tinystories/best.pt")
    result = evaluate(model, tokenizer, "valid.txt")      # or a .npy token array
    result.loss, result.perplexity, result.bits_per_byte

The data is read as a stream (a text file is encoded chunk by chunk with the model's tokenizer), preceded
by the tokenizer's first special token (usually `<|endoftext|>`, the separator the model saw before every
document in training), so that the first token is scored too. Without a special token the first token can
only be context: it is not scored and its bytes are not counted.

Windows: with context T and stride S (default S = T), the first window scores its T tokens; every later
window ends S tokens further on and scores only its last S tokens, so each token is scored exactly once.
With S = T the windows do not overlap: the first token of each window is predicted from one token of
context, the last from T. With S < T every token after the first window has at least T - S tokens of
context, which brings the loss closer to what the model does with a full context, for T / S times the
forward passes. The last window scores whatever is left.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmkit.bpb import bits_per_byte, count_bytes, token_byte_lengths
from lmkit.device import autocast
from lmkit.errors import InputError
from lmkit.model import Documents, TransformerLM
from lmkit.progress import progress_bar
from lmkit.tokenizer import Tokenizer
from lmkit.training.data import load_tokens, to_device
from lmkit.training.loss import cross_entropy

NPY_MAGIC = b"\x93NUMPY"
# Token arrays are read from their memory map this many ids at a time.
_NPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class EvalResult:
    """The totals of an evaluation: scored tokens, their text bytes and their summed loss in nats."""

    tokens: int
    bytes: int
    total_nats: float
    seconds: float

    @property
    def loss(self) -> float:
        """Mean loss in nats per token."""
        return self.total_nats / self.tokens

    @property
    def perplexity(self) -> float:
        """exp(mean loss)."""
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        """Total nats / (ln 2 * bytes); see lmkit.bpb."""
        return bits_per_byte(self.total_nats, self.bytes)

    def facts(self) -> dict[str, object]:
        """The figures `lmkit eval` reports."""
        return {
            "tokens": self.tokens,
            "bytes": self.bytes,
            "bytes_per_token": self.bytes / self.tokens,
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
            "seconds": round(self.seconds, 3),
            "tokens_per_s": self.tokens / self.seconds if self.seconds > 0 else None,
        }


def windows(
    chunks: Iterable[np.ndarray], context: int, stride: int, max_tokens: int | None = None
) -> Iterator[tuple[np.ndarray, int]]:
    """Cut a stream of ids (given in chunks) into windows; yield `(window, n)`: up to context + 1 ids whose
    last `n` positions are to be scored (each predicted from the ids before it in the window).

    Position 0 of the stream is context only; every later position is scored exactly once, as the module
    docstring says. `max_tokens` stops after that many scored positions.
    """
    limit = math.inf if max_tokens is None else max_tokens
    buffer, base = np.zeros(0, dtype=np.int64), 0  # base: the stream position of buffer[0]
    scored = 0  # the last position scored so far (0: none)
    for chunk in chunks:
        buffer = np.concatenate([buffer, chunk.astype(np.int64, copy=False)])
        while scored < limit:
            end = scored + min(context if scored == 0 else stride, limit - scored)  # the last position to score
            if end >= base + len(buffer):
                break
            start = max(0, end - context)
            yield buffer[start - base : end + 1 - base], end - scored
            scored = end
            keep_from = max(0, scored + 1 - context)  # the earliest position a later window can need
            buffer, base = buffer[keep_from - base :], keep_from
        if scored >= limit:
            return
    last = base + len(buffer) - 1  # the data ended before a full stride: one window for what is left
    if scored < last:
        yield buffer[max(0, last - context) - base :], last - scored


def _batches(items: Iterable[tuple[np.ndarray, int]], batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Stack consecutive windows of the same length and scored count into (rows, n) batches of up to batch_size."""
    pending: list[np.ndarray] = []
    shape: tuple[int, int] | None = None
    for window, n in items:
        if pending and ((len(window), n) != shape or len(pending) == batch_size):
            yield np.stack(pending), shape[1]
            pending = []
        pending.append(window)
        shape = (len(window), n)
    if pending:
        yield np.stack(pending), shape[1]


@torch.no_grad()
def window_nats(
    model: TransformerLM,
    rows: np.ndarray,
    n: int,
    autocast_dtype: torch.dtype | None = None,
    separator_id: int | None = None,
) -> float:
    """The summed loss in nats of the last `n` tokens of each row of `rows` (B, W), each predicted from the
    tokens before it in its row (of its own document only, with a `separator_id`: see lmkit.model.documents)."""
    device = model.lm_head.weight.device
    inputs, targets = to_device(torch.from_numpy(rows), device)
    documents = None if separator_id is None else Documents.from_ids(inputs, separator_id)
    with autocast(device, autocast_dtype):
        logits = model(inputs, documents=documents)
    return cross_entropy(logits[:, -n:], targets[:, -n:]).item() * (rows.shape[0] * n)


def start_ids(tokenizer: Tokenizer) -> np.ndarray:
    """What precedes the data: the tokenizer's first special token (usually <|endoftext|>), or nothing."""
    if not tokenizer.special_tokens:
        return np.zeros(0, dtype=np.int64)
    return np.array([tokenizer.special_ids[tokenizer.special_tokens[0]]], dtype=np.int64)


def is_token_array(path: str | os.PathLike) -> bool:
    """Whether `path` is a .npy file (by its suffix or its first bytes) rather than text."""
    path = Path(path)
    if path.suffix == ".npy":
        return True
    with path.open("rb") as handle:
        return handle.read(len(NPY_MAGIC)) == NPY_MAGIC


def _token_chunks(tokens: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(tokens), _NPY_CHUNK):
        yield np.asarray(tokens[start : start + _NPY_CHUNK])


@contextlib.contextmanager
def _data_chunks(
    data: Path, tokenizer: Tokenizer, lengths: np.ndarray, max_ids: int | None, workers: int
) -> Iterator[tuple[Iterator[np.ndarray], int, str]]:
    """The data as chunks of ids, with the progress total and unit: MB of text (progress counts the bytes
    scored), or M tokens for a token array (progress counts the tokens scored). A token array is cut to
    `max_ids` and its ids are checked against `lengths` (see count_bytes) first; a text is encoded by
    `workers` processes."""
    from lmkit.tokenizer.encode import CHUNK_BYTES, encoded_chunks
    from lmkit.tokenizer.pretokenize import corpus_size

    if not data.exists():
        raise InputError(f"data file {data} does not exist; give a text file or a .npy token array")
    if data.is_dir():
        raise InputError(f"data {data} is a folder; give a text file or a .npy token array")
    if is_token_array(data):
        tokens = load_tokens(data, "data")[:max_ids]
        if len(tokens) == 0:
            raise InputError(f"data file {data} holds no tokens")
        for chunk in _token_chunks(tokens):  # every id checked before the work starts, not after hours of it
            count_bytes(chunk, lengths, f"data {data}")
        yield _token_chunks(tokens), len(tokens), "M tokens"
        return
    size = corpus_size(data)
    workers = min(workers, math.ceil(size / CHUNK_BYTES))  # no more workers than chunks
    with encoded_chunks(data, tokenizer, workers) as chunks:
        yield (ids for _, ids in chunks), size, "MB"


def evaluate(
    model: TransformerLM,
    tokenizer: Tokenizer,
    data: str | os.PathLike,
    *,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    workers: int = 1,
    show_progress: bool = False,
    document_mask: bool = False,
) -> EvalResult:
    """Score the text file or `.npy` token array `data` with `model` (see the module docstring).

    `context` defaults to the model's context length, `stride` to `context`; a text is encoded by `workers`
    processes while it is scored. With `document_mask` each token is predicted from its own document only
    (documents end with the tokenizer's first special token), as a model trained with train.document_mask
    reads. InputError for missing or empty data, ids the tokenizer or the model does not have, options out
    of range, and `document_mask` with a tokenizer that has no special token.
    """
    context = model.config.context_length if context is None else context
    stride = context if stride is None else stride
    _check_options(model, context, stride, batch_size, max_tokens, workers)
    separator_id = None
    if document_mask:
        if not tokenizer.special_tokens:
            raise InputError("--document-mask needs a tokenizer with a special token that ends each document")
        separator_id = tokenizer.special_ids[tokenizer.special_tokens[0]]
    vocab_size = model.config.vocab_size
    lengths = token_byte_lengths(tokenizer.vocab, tokenizer.special_tokens, vocab_size)[:vocab_size]
    data = Path(data)
    model.eval()
    tokens = n_bytes = 0
    total_nats = 0.0
    start = time.perf_counter()
    with (
        # Scoring max_tokens needs max_tokens + 1 ids at most (the first is context without a start token).
        _data_chunks(data, tokenizer, lengths, max_tokens and max_tokens + 1, workers) as (chunks, total, unit),
        progress_bar("Evaluating", total, unit, scale=1e6, enabled=show_progress) as bar,
    ):
        # The bar follows the scoring, batch by batch (the data is read far ahead of it).
        for rows, n in _batches(
            windows(itertools.chain([start_ids(tokenizer)], chunks), context, stride, max_tokens), batch_size
        ):
            batch_bytes = count_bytes(rows[:, -n:].ravel(), lengths, f"data {data}")
            total_nats += window_nats(model, rows, n, autocast_dtype, separator_id)
            n_bytes, tokens = n_bytes + batch_bytes, tokens + rows.shape[0] * n
            bar.advance(batch_bytes if unit == "MB" else rows.shape[0] * n)
            bar.update(description=f"Evaluating: loss {total_nats / tokens:.3f}")
    if tokens == 0:
        raise InputError(
            f"data {data} is too short to score: one token, and the tokenizer has no special token to put before it"
        )
    if n_bytes == 0:
        raise InputError(f"data {data} holds only special tokens: no text bytes to score")
    return EvalResult(tokens=tokens, bytes=n_bytes, total_nats=total_nats, seconds=time.perf_counter() - start)


def _check_options(
    model: TransformerLM, context: int, stride: int, batch_size: int, max_tokens: int | None, workers: int
) -> None:
    if not 1 <= context <= model.config.context_length:
        raise InputError(f"--context must be in 1 … {model.config.context_length} (the model's), got {context}")
    if not 1 <= stride <= context:
        raise InputError(f"--stride must be in 1 … {context} (the context), got {stride}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise InputError(f"--max-tokens must be at least 1, got {max_tokens}")
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
