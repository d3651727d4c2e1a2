"""Counting pre-tokens in a corpus: streamed in chunks, counted in worker processes for large corpora.

The corpus (one file, or many inputs joined into one stream by `lmkit.tokenizer.sources`) is read in chunks
cut at safe boundaries (see `iter_chunks`), so memory holds a few chunks and the table of distinct
pre-tokens, never the whole corpus. Each worker keeps a running total of the chunks it counted and hands it
over once at the end; totals are summed, and addition does not care about order, so the result is the same
for any number of workers and any chunk size.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from functools import cache

from lmkit.interrupts import prepare_worker, start_workers
from lmkit.progress import ProgressBar, progress_bar
from lmkit.threads import usable_cpus
from lmkit.tokenizer.fast_pretokenize import split_pretokens
from lmkit.tokenizer.pretokenize import (
    SpecialTokenFinder,
    corpus_size,
    decode_chunk,
    iter_chunks,
)
from lmkit.tokenizer.sources import Corpus, as_corpus, check_not_empty, open_corpus

CHUNK_BYTES = 1 << 20
# Below this size a pool costs more to start than it saves: count in the calling process.
PARALLEL_MIN_BYTES = 4 << 20


@dataclass
class PretokenCounts:
    """How often each pre-token occurs in a corpus, and facts about the corpus for reports."""

    counts: Counter[str]
    corpus_bytes: int
    documents: int  # stretches of text separated by special tokens


@cache
def _finder(special_tokens: tuple[str, ...]) -> SpecialTokenFinder:
    return SpecialTokenFinder(special_tokens)


def _count_chunk(
    offset: int, chunk: bytes, special_tokens: tuple[str, ...], pattern: str, into: Counter[str]
) -> tuple[int, bool]:
    """Add the pre-tokens of one chunk to `into`.

    Returns the number of special tokens in the chunk and whether text follows the last of them.
    """
    specials, ends_in_text = 0, False
    for piece, is_special in _finder(special_tokens).split(decode_chunk(offset, chunk)):
        if is_special:
            specials += 1
        else:
            into.update(split_pretokens(piece, pattern))
        ends_in_text = not is_special
    return specials, ends_in_text


# In a worker process: its running total, and the barrier that its hand-over waits at.
_worker_total: Counter[str] = Counter()
_hand_over_barrier = None


def _start_worker(barrier, parent_pid: int) -> None:
    global _hand_over_barrier
    prepare_worker(parent_pid)  # Ctrl-C is the parent's to handle: leaving the pool terminates the workers
    _hand_over_barrier = barrier


def _count_in_worker(offset: int, chunk: bytes, special_tokens: tuple[str, ...], pattern: str) -> tuple[int, bool]:
    return _count_chunk(offset, chunk, special_tokens, pattern, _worker_total)


def _hand_over(_: int) -> Counter[str]:
    """Return this worker's total. Each call waits until every worker holds one, so no worker gets two."""
    _hand_over_barrier.wait()
    return _worker_total


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds; other platforms get their safe default.
    return multiprocessing.get_context("fork" if sys.platform == "linux" else None)


def _count_here(
    chunks: Iterator[tuple[int, bytes]], tokens: tuple[str, ...], pattern: str, total: Counter[str], bar
) -> tuple[int, bool]:
    """Count chunk after chunk in this process; returns (special tokens, whether text follows the last)."""
    specials, ends_in_text = 0, False
    for offset, chunk in chunks:
        specials_here, ends_in_text = _count_chunk(offset, chunk, tokens, pattern, total)
        specials += specials_here
        bar.advance(len(chunk))
    return specials, ends_in_text


def _count_in_pool(
    pool,
    workers: int,
    chunks: Iterator[tuple[int, bytes]],
    tokens: tuple[str, ...],
    pattern: str,
    total: Counter[str],
    bar,
) -> tuple[int, bool]:
    """Count the chunks in the pool's workers, at most two per worker in flight, then sum their totals."""
    specials, ends_in_text = 0, False
    pending: deque = deque()

    def collect_oldest() -> None:
        nonlocal specials, ends_in_text
        length, job = pending.popleft()
        specials_here, ends_in_text = job.get()  # in file order, so the last one collected is the file's end
        specials += specials_here
        bar.advance(length)

    for offset, chunk in chunks:
        pending.append((len(chunk), pool.apply_async(_count_in_worker, (offset, chunk, tokens, pattern))))
        while pending and (len(pending) > 2 * workers or pending[0][1].ready()):
            collect_oldest()
    while pending:
        collect_oldest()
    for part in pool.map(_hand_over, range(workers), chunksize=1):
        total.update(part)
    return specials, ends_in_text


def count_pretokens(
    corpus: Corpus | str | os.PathLike | Sequence[str | os.PathLike],
    special_tokens: list[str],
    *,
    num_workers: int | None = None,
    progress: bool = False,
    chunk_bytes: int | None = None,
    parallel_min_bytes: int | None = None,
    pattern: str = "gpt2",
) -> PretokenCounts:
    """Count every pre-token of a UTF-8 corpus (special tokens split the text and are not counted).

    `pattern` is a stored pattern (`check_pattern`): a preset name or a regex.

    `corpus` is a Corpus (`lmkit.tokenizer.sources`) or what `find_corpus` takes; paths found here get the
    first special token as the separator between documents. It is read in chunks of about `chunk_bytes`
    (default `CHUNK_BYTES`). Corpora of at least `parallel_min_bytes` (default `PARALLEL_MIN_BYTES`) on disk,
    or of unknown size, are counted by `num_workers` processes (default: one per core); smaller ones, or one
    worker, in this process. Raises InputError for a missing, empty or non-UTF-8 corpus.
    """
    corpus = as_corpus(corpus, special_tokens[0] if special_tokens else "")
    plain_file = corpus.plain_text_file()
    size = corpus_size(plain_file) if plain_file is not None else corpus.disk_bytes()
    workers = num_workers or usable_cpus()
    tokens = tuple(special_tokens)
    total: Counter[str] = Counter()
    min_bytes = PARALLEL_MIN_BYTES if parallel_min_bytes is None else parallel_min_bytes
    parallel = workers > 1 and (size is None or size >= min_bytes)
    context = _pool_context()
    # The pool is forked before the progress bar starts its drawing thread.
    pool = nullcontext()
    if parallel:
        with start_workers():
            pool = context.Pool(workers, _start_worker, (context.Barrier(workers), os.getpid()))
    with pool, progress_bar("Pre-tokenizing", size, "MB", scale=1e6, enabled=progress) as bar, ExitStack() as stack:
        if plain_file is not None:
            source, chunk_bar = stack.enter_context(open(plain_file, "rb")), bar
        else:  # the stream advances the bar by the bytes it reads from disk
            source, chunk_bar = open_corpus(corpus, bar), ProgressBar(None, None)
        chunks = iter_chunks(source, tokens, chunk_bytes or CHUNK_BYTES, pattern)
        if parallel:
            specials, ends_in_text = _count_in_pool(pool, workers, chunks, tokens, pattern, total, chunk_bar)
        else:
            specials, ends_in_text = _count_here(chunks, tokens, pattern, total, chunk_bar)
        corpus_bytes = size if plain_file is not None else source.bytes_read
    check_not_empty(corpus, corpus_bytes)
    return PretokenCounts(total, corpus_bytes, specials + int(ends_in_text))
