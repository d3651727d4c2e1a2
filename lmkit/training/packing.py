"""Rows that start at a document (`train.batching = "documents"`): documents packed into rows by best fit.

The training tokens are documents, each ending with the separator (`<|endoftext|>`). A batch is built from
documents drawn uniformly at random (a pool of POOL_PER_ROW per row, drawn again when used up). Each row of
context_length + 1 tokens is filled in turn: the largest pooled document that fits the space left goes in,
again and again; when none fits, the smallest pooled document is cropped to the space left (its start kept)
and ends the row. So every row starts at a document's first token, and only the cropped ends are lost: their
share of the tokens drawn is `dropped_fraction`. Documents left in the pool at the end of a batch go back, so a
batch depends only on the generator's state when it is drawn, which is what a checkpoint keeps: a resumed run
draws the same batches.
"""

from __future__ import annotations

import bisect

import numpy as np
import torch

from lmkit.errors import InputError
from lmkit.training.data import TokenShards

POOL_PER_ROW = 8
# Separators are found a chunk at a time, so memory stays bounded on a memory map of any size.
_SCAN_CHUNK = 1 << 24


class DocumentPacker:
    """Packs the documents of `tokens` (ending with `separator_id`) into rows of `context_length` + 1 tokens."""

    def __init__(self, tokens: np.ndarray | TokenShards, separator_id: int, context_length: int) -> None:
        shards = TokenShards.of(tokens)
        # Documents never span shards: each shard's first token starts one.
        found = [_document_starts(array, separator_id) for array in shards.arrays]
        starts = np.concatenate([doc_starts for doc_starts, _ in found])
        if len(starts) < 2:
            raise InputError(
                f'train.batching = "documents" needs documents: the training data holds {len(starts)} '
                f"(separated by token {separator_id}, the tokenizer's first special token)"
            )
        self.shards, self.width = shards, context_length + 1
        self.shard_of = np.concatenate([np.full(len(doc_starts), i) for i, (doc_starts, _) in enumerate(found)])
        self.starts, self.lengths = starts, np.concatenate([lengths for _, lengths in found])
        self.kept = self.dropped = 0

    @property
    def dropped_fraction(self) -> float:
        """The share of the drawn documents' tokens cropped away so far (0 before any batch)."""
        drawn = self.kept + self.dropped
        return self.dropped / drawn if drawn else 0.0

    def draw(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """A (batch_size, context_length + 1) int64 batch of rows, each starting at a document."""
        pool: list[tuple[int, int]] = []  # (length, document), sorted
        rows = []
        for _ in range(batch_size):
            parts, space = [], self.width
            while space:
                if not pool:
                    drawn = torch.randint(0, len(self.starts), (POOL_PER_ROW * batch_size,), generator=generator)
                    pool = sorted((int(self.lengths[d]), int(d)) for d in drawn.tolist())
                fits = bisect.bisect_right(pool, (space, len(self.starts))) - 1
                length, document = pool.pop(fits if fits >= 0 else 0)
                taken = min(length, space)
                start = int(self.starts[document])
                parts.append(np.asarray(self.shards.arrays[self.shard_of[document]][start : start + taken]))
                self.kept, self.dropped = self.kept + taken, self.dropped + length - taken
                space -= taken
            rows.append(np.concatenate(parts))
        return torch.from_numpy(np.stack(rows).astype(np.int64))


def _document_starts(tokens: np.ndarray, separator_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of the documents of one shard: the first starts the shard, each other follows a
    separator; an empty shard has none."""
    ends = [
        np.flatnonzero(np.asarray(tokens[i : i + _SCAN_CHUNK]) == separator_id) + i + 1
        for i in range(0, len(tokens), _SCAN_CHUNK)
    ]
    ends = np.concatenate([*ends, np.zeros(0, dtype=np.int64)])
    starts = np.concatenate([[0], ends[ends < len(tokens)]]) if len(tokens) else np.zeros(0, dtype=np.int64)
    return starts.astype(np.int64), np.diff(np.append(starts, len(tokens))).astype(np.int64)
