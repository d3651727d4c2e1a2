"""Token arrays on disk and the batches drawn from them.

Data is one `.npy`, a folder of `.npy` shards or a glob of them (`TokenShards`), each memory-mapped. A window
never crosses from one shard into the next: the window starts of every shard are numbered one after another in
the shards' order (sorted by path), and a draw over that numbering picks the shard and the start together, so a
corpus in one file is sampled exactly as the same tokens would be in one shard.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from itertools import zip_longest
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


@dataclass(frozen=True)
class TokenShards:
    """Memory-mapped token shards read in order; `names` are their paths as given (what a checkpoint keeps)."""

    arrays: tuple[np.ndarray, ...]
    names: tuple[str, ...]

    @classmethod
    def of(cls, tokens: np.ndarray | TokenShards) -> TokenShards:
        """`tokens` as shards: one array becomes a single shard."""
        return tokens if isinstance(tokens, TokenShards) else cls((tokens,), ("tokens",))

    def __len__(self) -> int:
        return sum(len(array) for array in self.arrays)

    def window_counts(self, context_length: int) -> np.ndarray:
        """How many (context_length + 1) windows start in each shard."""
        return np.array([max(len(array) - context_length, 0) for array in self.arrays], dtype=np.int64)

    def windows(self, starts: np.ndarray, context_length: int) -> torch.Tensor:
        """The (len(starts), context_length + 1) int64 windows at `starts`, numbered over every shard's window
        starts in order (see the module's docstring)."""
        ends = np.cumsum(self.window_counts(context_length))
        shards = np.searchsorted(ends, starts, side="right")
        offsets = starts - np.concatenate(([0], ends))[shards]
        pairs = zip(shards.tolist(), offsets.tolist(), strict=True)
        rows = [self.arrays[shard][offset : offset + context_length + 1] for shard, offset in pairs]
        return torch.from_numpy(np.stack(rows).astype(np.int64))


def _shard_paths(spec: Path, what: str) -> list[Path]:
    """The .npy files `spec` names: itself, those in the folder it is, or those its glob pattern matches."""
    if spec.is_file():
        return [spec]
    if spec.is_dir():
        paths = sorted(spec.glob("*.npy"))
        if not paths:
            raise InputError(
                f"{what} folder {spec} holds no .npy shards; encode a corpus with `lmkit tokenizer encode`"
            )
        return paths
    if glob.has_magic(str(spec)):
        paths = sorted(Path(p) for p in glob.glob(str(spec)) if Path(p).is_file())
        if not paths:
            raise InputError(f"{what} pattern {spec} matches no files")
        return paths
    raise InputError(f"{what} file {spec} does not exist; encode a corpus with `lmkit tokenizer encode`")


def load_shards(spec: str | os.PathLike, what: str = "data") -> TokenShards:
    """Memory-map the token shards `spec` names: one .npy, a folder of .npy shards or a glob pattern, read in
    sorted order. Every shard must hold 1-D ids of the first one's dtype."""
    paths = _shard_paths(Path(spec), what)
    arrays = [load_tokens(path, what) for path in paths]
    for path, array in zip(paths, arrays, strict=True):
        if array.dtype != arrays[0].dtype:
            raise InputError(
                f"{what} shard {path} holds {array.dtype} ids, unlike {paths[0]} ({arrays[0].dtype}); "
                "encode every shard with the same tokenizer"
            )
    return TokenShards(tuple(arrays), tuple(str(path) for path in paths))


def check_shards(shards: TokenShards, vocab_size: int, context_length: int, what: str = "data") -> None:
    """`check_tokens` on data in shards: every id of every shard (an error names the shard), and at least one
    (context + 1) window in some shard."""
    if len(shards.arrays) == 1:
        check_tokens(shards.arrays[0], vocab_size, context_length, f"{what} {shards.names[0]}")
        return
    for name, array in zip(shards.names, shards.arrays, strict=True):
        _check_ids(array, vocab_size, f"{what} shard {name}")
    if not shards.window_counts(context_length).any():
        raise InputError(
            f"{what}: none of its {len(shards.arrays)} shards holds context_length + 1 = {context_length + 1} tokens"
        )


def shard_order(shards: TokenShards) -> list[list[str | int]]:
    """[file name, tokens] of each shard in order: what a checkpoint keeps, as the sampler's numbering of
    window starts (and so a resumed run's batches) depends on it."""
    return [[Path(name).name, len(array)] for name, array in zip(shards.names, shards.arrays, strict=True)]


def check_same_shards(order: list[list[str | int]], saved: list[list[str | int]] | None, spec: object) -> None:
    """InputError when the shards a run resumes on are not those (in that order) its checkpoint was drawn from
    (`saved`; None for a checkpoint from before shards were recorded, which is not checked)."""
    if saved is None or [list(entry) for entry in saved] == order:
        return
    for index, (now, then) in enumerate(zip_longest(order, saved)):
        if now != then:
            raise InputError(
                f"train data {spec} is not what the run started on: shard {index + 1} is {_describe(now)}, "
                f"was {_describe(then)}; resume on the same shards in the same order"
            )


def _describe(entry: list[str | int] | None) -> str:
    return "missing" if entry is None else f"{entry[0]} ({entry[1]:,} tokens)"


def check_tokens(tokens: np.ndarray, vocab_size: int, context_length: int, what: str = "data") -> None:
    """Refuse arrays too short for one (context + 1) window, or holding any id outside [0, vocab_size)."""
    if len(tokens) < context_length + 1:
        raise InputError(f"{what} has {len(tokens):,} tokens, fewer than context_length + 1 = {context_length + 1}")
    _check_ids(tokens, vocab_size, what)


def _check_ids(tokens: np.ndarray, vocab_size: int, what: str) -> None:
    for start in range(0, len(tokens), _ID_CHECK_CHUNK):
        chunk = tokens[start : start + _ID_CHECK_CHUNK]
        if not len(chunk):
            continue
        low, high = int(chunk.min()), int(chunk.max())
        if low < 0 or high >= vocab_size:
            bad = high if high >= vocab_size else low
            position = start + int(np.argmax(chunk == bad))
            raise InputError(
                f"{what} holds token id {bad}, outside the model's vocabulary of {vocab_size} (first at "
                f"position {position:,}); was it encoded with a different tokenizer?"
            )


def get_batch(
    x: np.ndarray | TokenShards,
    batch_size: int,
    context_length: int,
    device: str | torch.device,
    generator: torch.Generator | None = None,
    rows: slice = slice(None),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw `batch_size` windows uniformly from `x`; return (inputs, targets) int64 of shape (B, T).

    Start positions are uniform over every window start (in one array: [0, len(x) - context_length - 1]);
    targets are the inputs shifted by one. Pass a dedicated `generator` to make the draws reproducible and
    resumable (its state is saved in run checkpoints). `rows` keeps only those rows of the batch (one process's
    share of a global batch under DDP); all `batch_size` positions are still drawn, so the generator advances
    alike in every process.
    """
    shards = TokenShards.of(x)
    count = int(shards.window_counts(context_length).sum())
    starts = torch.randint(0, count, (batch_size,), generator=generator)[rows].numpy()
    return to_device(shards.windows(starts, context_length), torch.device(device))


def validation_batches(
    x: np.ndarray | TokenShards, batch_size: int, context_length: int, num_batches: int
) -> list[torch.Tensor]:
    """A fixed set of `num_batches` (B, T + 1) windows, evenly spaced over `x`'s window starts, kept on the CPU.

    The same windows are used at every evaluation, so validation curves compare across steps and runs.
    """
    shards = TokenShards.of(x)
    count = batch_size * num_batches
    starts = np.linspace(0, int(shards.window_counts(context_length).sum()) - 1, count).astype(np.int64)
    return list(shards.windows(starts, context_length).split(batch_size))


def to_device(window: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Move one (B, T + 1) window batch to `device` and split it into (inputs, targets)."""
    if device.type == "cuda":
        # Pinned host memory lets the copy run asynchronously while the GPU finishes the previous step.
        window = window.pin_memory().to(device, non_blocking=True)
    else:
        window = window.to(device)
    return window[:, :-1], window[:, 1:]
