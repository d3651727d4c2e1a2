"""Documents inside a row: attention that stays within each, and positions that restart at each.

A row of training data may hold several documents, each ending with a separator token (`<|endoftext|>`): the
separator belongs to the document it ends, and the next token starts a new one. With a `Documents` layout the
model lets a token attend only to earlier tokens of its own document, and RoPE numbers the tokens of each
document from 0, so a document packed after others is read exactly as it would be alone.

    documents = Documents.from_ids(token_ids, separator_id)
    logits = model(token_ids, documents=documents)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Documents:
    """Where the documents of each row are: `mask` (B, 1, T, T) bool, True where a query (row 3) may attend
    to a key (column 4): an earlier or the same position of the same document; `positions` (B, T) int64,
    each token's position within its document."""

    mask: Tensor
    positions: Tensor

    @classmethod
    def from_ids(cls, token_ids: Tensor, separator_id: int) -> Documents:
        """The layout of the (B, T) `token_ids`, where a document ends with `separator_id`."""
        seq_len = token_ids.shape[-1]
        ends = token_ids == separator_id
        # The document of each token: how many separators come before it in its row.
        starts_after = torch.zeros_like(ends)
        starts_after[:, 1:] = ends[:, :-1]
        document = starts_after.long().cumsum(dim=-1)
        index = torch.arange(seq_len, device=token_ids.device).expand_as(document)
        # A document's first index is the largest index so far at which a document started.
        first = torch.where(starts_after | (index == 0), index, torch.zeros_like(index)).cummax(dim=-1).values
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=token_ids.device).tril()
        same = document[:, :, None] == document[:, None, :]
        return cls(mask=(same & causal)[:, None], positions=index - first)
