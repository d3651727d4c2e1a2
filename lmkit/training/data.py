"""Token arrays on disk and the batches drawn from them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from lmkit.errors import InputError

# Every id is checked at start, a chunk of this many at a time, so memory stays bounded on a memory map
# of any size (a vectorised min/max reads a GB of uint16 ids in about a second).
_ID_CHECK_CHUNK = 1 << 24


def load_tokens(path: str | os.PathLike, what: str = "data") -> np.ndarray:
    """Memory-map a 1-D integer `.npy` token array (nothing is read into memory until used)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file {path} does not exist; encode a corpus with `lmkit tokenizer encode`")
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{what} file {path} is not a .npy token array ({exc})") from None
    if tokens.ndim != 1 or tokens.dtype.kind not in "ui":
        raise InputError(f"{what} file {path} holds a {tokens.dtype} array of shape {tokens.shape}, not 1-D ids")
    return tokens


def check_tokens(tokens: np.ndarray, vocab_size: int, context_length: int, what: str = "data") -> None:
    """Refuse arrays too short for one (context + 1) window, or holding any id outside [0, vocab_size)."""
    if len(tokens) < context_length + 1:
        raise InputError(f"{what} has {len(tokens):,} tokens, fewer than context_length + 1 = {context_length + 1}")
    for start in range(0, len(tokens), _ID_CHECK_CHUNK):
        chunk = tokens[start : start + _ID_CHECK_CHUNK]
        low, high = int(chunk.min()), int(chunk.max())
        if low < 0 or high >= vocab_size:
            bad = high if high >= vocab_size else low
            position = start + int(np.argmax(chunk == bad))
            raise InputError(
                f"{what} holds token id {bad}, outside the model's vocabulary of {vocab_size} (first at "
                f"position {position:,}); was it encoded with a different tokenizer?"
            )


def _windows(tokens: np.ndarray, starts: np.ndarray, context_length: int) -> torch.Tensor:
    """The (len(starts), context_length + 1) int64 windows beginning at `starts`."""
    rows = np.stack([tokens[s : s + context_length + 1] for s in starts.tolist()])
    return torch.from_numpy(rows.astype(np.int64))


def get_batch(
    x: np.ndarray,
    batch_size: int,
    context_length: int,
    device: str | torch.device,
    generator: torch.Generator | None = None,
    rows: slice = slice(None),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw `batch_size` windows uniformly from `x`; return (inputs, targets) int64 of shape (B, T).

    Start positions are uniform over [0, len(x) - context_length - 1]; targets are the inputs shifted by
    one. Pass a dedicated `generator` to make the draws reproducible and resumable (its state is saved
    in run checkpoints). `rows` keeps only those rows of the batch (one process's share of a global batch
    under DDP); all `batch_size` positions are still drawn, so the generator advances alike in every process.
    """
    starts = torch.randint(0, len(x) - context_length, (batch_size,), generator=generator)[rows].numpy()
    return to_device(_windows(x, starts, context_length), torch.device(device))


def validation_batches(x: np.ndarray, batch_size: int, context_length: int, num_batches: int) -> list[torch.Tensor]:
    """A fixed set of `num_batches` (B, T + 1) windows, evenly spaced over `x`, kept on the CPU.

    The same windows are used at every evaluation, so validation curves compare across steps and runs.
    """
    count = batch_size * num_batches
    starts = np.linspace(0, len(x) - context_length - 1, count).astype(np.int64)
    return list(_windows(x, starts, context_length).split(batch_size))


def to_device(window: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Move one (B, T + 1) window batch to `device` and split it into (inputs, targets)."""
    if device.type == "cuda":
        # Pinned host memory lets the copy run asynchronously while the GPU finishes the previous step.
        window = window.pin_memory().to(device, non_blocking=True)
    else:
        window = window.to(device)
    return window[:, :-1], window[:, 1:]
