"""Bits per byte: a model's loss in units that do not depend on its tokenizer.

bpb = (sum over scored tokens of -ln p(token)) / (ln 2 * bytes), where `bytes` is the UTF-8 length of the
text the scored tokens decode to and special tokens count 0 bytes. Two models with different vocabularies
that score the same text are scored over the same bytes, so their bpb compare where their per-token losses
do not (a tokenizer with longer tokens has fewer, harder tokens).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from lmkit.errors import InputError

# The byte length of an id that the tokenizer does not define (a hole in the vocabulary, or an id beyond it).
UNKNOWN_ID = -1


def token_byte_lengths(vocab: Mapping[int, bytes], special_tokens: Iterable[str], size: int = 0) -> np.ndarray:
    """The number of text bytes each id stands for, indexed by id: 0 for special tokens, UNKNOWN_ID for ids
    the vocabulary does not hold. The array covers max(size, the largest id + 1) ids."""
    lengths = np.full(max(size, max(vocab) + 1), UNKNOWN_ID, dtype=np.int64)
    special = {token.encode("utf-8") for token in special_tokens}
    for token_id, token in vocab.items():
        lengths[token_id] = 0 if token in special else len(token)
    return lengths


def count_bytes(ids: np.ndarray, lengths: np.ndarray, what: str = "the data") -> int:
    """The text bytes of `ids` (see token_byte_lengths); InputError for an id the tokenizer does not define."""
    if len(ids) == 0:
        return 0
    high = int(ids.max())
    if high >= len(lengths) or int(ids.min()) < 0:
        bad = high if high >= len(lengths) else int(ids.min())
        raise InputError(
            f"{what} holds token id {bad}, outside the vocabulary of {len(lengths)}; "
            "was it encoded with a different tokenizer?"
        )
    per_token = lengths[ids]
    if (per_token == UNKNOWN_ID).any():
        bad = int(ids[np.argmax(per_token == UNKNOWN_ID)])
        raise InputError(f"{what} holds token id {bad}, which the tokenizer does not define")
    return int(per_token.sum())


def bits_per_byte(nats: float, text_bytes: float) -> float:
    """A loss of `nats` over `text_bytes` UTF-8 bytes of text, in bits per byte: a total loss over the total
    bytes, or equally a mean loss per token over the mean bytes per token."""
    return nats / (math.log(2) * text_bytes)
