"""The facts `lmkit tokenizer inspect` reports: what a tokenizer holds, and how it encodes a sample file."""

from __future__ import annotations

import os
import time

import numpy as np

from lmkit.tokenizer.encode import CHUNK_BYTES
from lmkit.tokenizer.pretokenize import corpus_size, decode_chunk, iter_chunks
from lmkit.tokenizer.tokenizer import Tokenizer
from lmkit.tokenizer.train import display_token


def describe_tokenizer(tokenizer: Tokenizer, top: int = 10) -> dict[str, object]:
    """Vocabulary size, merges, special tokens, the pre-token pattern and the `top` longest tokens (by bytes)."""
    specials = set(tokenizer.special_ids.values())
    ordinary = [token for token_id, token in tokenizer.vocab.items() if token_id not in specials]
    longest = sorted(ordinary, key=len, reverse=True)[:top]
    return {
        "vocab size": len(tokenizer.vocab),
        "merges": len(tokenizer.merges),
        "special tokens": list(tokenizer.special_tokens),
        "pattern": tokenizer.pattern,
        "longest tokens": [display_token(t) for t in longest],
    }


def describe_sample(tokenizer: Tokenizer, sample: str | os.PathLike, top: int = 10) -> dict[str, object]:
    """Encode the file `sample` (streamed): bytes per token, tokens/s and the `top` most frequent tokens."""
    size = corpus_size(sample)
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    seconds = 0.0
    with open(sample, "rb") as source:
        for offset, chunk in iter_chunks(source, tokenizer.special_tokens, CHUNK_BYTES):
            text = decode_chunk(offset, chunk)
            start = time.perf_counter()
            ids = tokenizer.encode_array(text)
            seconds += time.perf_counter() - start
            counts += np.bincount(ids, minlength=len(counts))
    tokens = int(counts.sum())
    frequent = np.argsort(-counts, kind="stable")[:top]
    return {
        "sample bytes": size,
        "sample tokens": tokens,
        "bytes/token": size / max(tokens, 1),
        "tokens/s": tokens / max(seconds, 1e-9),
        "most frequent tokens": {display_token(tokenizer.vocab[int(i)]): int(counts[i]) for i in frequent if counts[i]},
    }
