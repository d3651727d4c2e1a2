"""Counting pre-tokens in a corpus file: streamed in chunks, counted in worker processes for large files.

The file is read in chunks cut at safe boundaries (see `iter_chunks`), so memory holds a few chunks and the
table of distinct pre-tokens, never the whole corpus. Counts are summed as chunks finish; addition does not
care about order, so the result is the same for any number of workers and any chunk size.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import Counter, deque
from dataclasses import dataclass
from functools import cache

from lmkit.progress import progress_bar
from lmkit.tokenizer.pretokenize import (
    PRETOKEN_RE,
    corpus_size,
    decode_chunk,
    iter_chunks,
    special_token_regex,
    split_on_special,
)

CHUNK_BYTES = 1 << 20
# Below this size a pool costs more to start than it saves: count in the calling process.
PARALLEL_MIN_BYTES = 4 << 20


@dataclass
class PretokenCounts:
    """How often each pre-token occurs in a corpus, and facts about the corpus for reports."""

    counts: Counter[str]
    corpus_bytes: int
    documents: int  # stretches of text separated by special tokens


@dataclass
class _ChunkCounts:
    counts: Counter[str]
    specials: int  # special tokens seen in the chunk
    ends_in_text: bool  # whether text follows the chunk's last special token


@cache
def _special_re(special_tokens: tuple[str, ...]):
    return special_token_regex(special_tokens)


def _count_chunk(offset: int, chunk: bytes, special_tokens: tuple[str, ...]) -> _ChunkCounts:
    """Count the pre-tokens of one chunk (runs in a worker process for large files)."""
    counts: Counter[str] = Counter()
    specials, ends_in_text = 0, False
    for piece, is_special in split_on_special(decode_chunk(offset, chunk), _special_re(special_tokens)):
        if is_special:
            specials += 1
        else:
            counts.update(PRETOKEN_RE.findall(piece))
        ends_in_text = not is_special
    return _ChunkCounts(counts, specials, ends_in_text)


def default_workers() -> int:
    """The number of CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds; other platforms get their safe default.
    return multiprocessing.get_context("fork" if sys.platform == "linux" else None)


def count_pretokens(
    input_path: str | os.PathLike,
    special_tokens: list[str],
    *,
    num_workers: int | None = None,
    progress: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
    parallel_min_bytes: int = PARALLEL_MIN_BYTES,
) -> PretokenCounts:
    """Count every pre-token of a UTF-8 corpus file (special tokens split the text and are not counted).

    Files of at least `parallel_min_bytes` are counted by `num_workers` processes (default: one per core),
    with at most two chunks per worker in flight; smaller files, or one worker, in this process.
    Raises InputError for a missing, empty or non-UTF-8 file.
    """
    size = corpus_size(input_path)
    workers = num_workers or default_workers()
    tokens = tuple(special_tokens)
    total: Counter[str] = Counter()
    specials, ends_in_text = 0, False

    def add(part: _ChunkCounts, last: bool) -> None:
        nonlocal specials, ends_in_text
        total.update(part.counts)
        specials += part.specials
        if last:
            ends_in_text = part.ends_in_text

    with open(input_path, "rb") as source:
        chunks = iter_chunks(source, tokens, chunk_bytes)
        if workers == 1 or size < parallel_min_bytes:
            with progress_bar("Pre-tokenizing", size, "MB", scale=1e6, enabled=progress) as bar:
                for offset, chunk in chunks:
                    add(_count_chunk(offset, chunk, tokens), offset + len(chunk) == size)
                    bar.advance(len(chunk))
        else:
            # The pool is forked before the progress bar starts its drawing thread.
            with _pool_context().Pool(workers) as pool:
                with progress_bar("Pre-tokenizing", size, "MB", scale=1e6, enabled=progress) as bar:
                    pending: deque = deque()

                    def finish_oldest() -> None:
                        offset, length, job = pending.popleft()
                        add(job.get(), offset + length == size)
                        bar.advance(length)

                    for offset, chunk in chunks:
                        pending.append((offset, len(chunk), pool.apply_async(_count_chunk, (offset, chunk, tokens))))
                        if len(pending) > 2 * workers:
                            finish_oldest()
                    while pending:
                        finish_oldest()
    return PretokenCounts(total, size, specials + int(ends_in_text))
