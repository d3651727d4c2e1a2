"""Encoding a corpus into `.npy` token arrays: parallel over chunks, streamed, with bounded memory.

The corpus is read in chunks cut where no pre-token or special token crosses (`iter_chunks`), the chunks are
encoded in worker processes, and the ids are written in corpus order as they come back, so the output is
the same for any number of workers. A `.npy` file is written data first (after room for its header) and
the header last, once the length is known, into a temporary file that is renamed into place at the end.

With a validation fraction the corpus is split by documents: the pieces that end with the tokenizer's
first special token (usually `<|endoftext|>`, which stays at the end of its document). Document i goes to
the validation file when `floor((i + 1) * f) > floor(i * f)`, which spreads every 1/f-th document evenly
through the corpus; `tokens.npy` becomes `tokens.train.npy` and `tokens.val.npy`.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import BinaryIO

import numpy as np

from lmkit.errors import InputError
from lmkit.fileio import atomic_write, check_output_path
from lmkit.interrupts import prepare_worker, start_workers
from lmkit.progress import ProgressBar, progress_bar
from lmkit.tokenizer.pretokenize import corpus_size, decode_chunk, iter_chunks
from lmkit.tokenizer.sources import Corpus, as_corpus, check_not_empty, open_corpus
from lmkit.tokenizer.tokenizer import Tokenizer

CHUNK_BYTES = 1 << 18
# A 1-D .npy header with up to 21 digits of length fits in 128 bytes; a fixed size lets the data go first.
_NPY_HEADER_BYTES = 128


def split_paths(out: str | os.PathLike) -> tuple[Path, Path]:
    """The train and validation files for `out`: `tokens.npy` -> `tokens.train.npy`, `tokens.val.npy`."""
    out = Path(out)
    stem = out.name.removesuffix(".npy")
    return out.with_name(f"{stem}.train.npy"), out.with_name(f"{stem}.val.npy")


def npy_header(dtype: np.dtype, length: int) -> bytes:
    """The `.npy` (version 1.0) header of a 1-D array, padded to `_NPY_HEADER_BYTES`."""
    text = f"{{'descr': '{dtype.str}', 'fortran_order': False, 'shape': ({length},), }}"
    room = _NPY_HEADER_BYTES - 10
    return b"\x93NUMPY\x01\x00" + room.to_bytes(2, "little") + text.ljust(room - 1).encode("ascii") + b"\n"


class _NpyWriter:
    """Appends ids to a 1-D `.npy` file whose length is not known in advance."""

    def __init__(self, handle: BinaryIO, dtype: np.dtype) -> None:
        self.handle, self.dtype, self.count = handle, dtype, 0
        handle.write(b"\0" * _NPY_HEADER_BYTES)

    def write(self, ids: np.ndarray) -> None:
        """Append `ids` (already of the file's dtype)."""
        self.handle.write(ids.tobytes())
        self.count += len(ids)

    def finish(self) -> None:
        """Write the header, now that the length is known."""
        self.handle.seek(0)
        self.handle.write(npy_header(self.dtype, self.count))


class _DocumentSplitter:
    """Routes each document's ids to the train or the validation writer (see the module docstring)."""

    def __init__(self, train: _NpyWriter, val: _NpyWriter, separator_id: int, val_fraction: float) -> None:
        self.train, self.val, self.separator_id, self.val_fraction = train, val, separator_id, val_fraction
        self.documents = 0  # documents finished so far; the current one has this index
        self._open = False  # whether the current document has ids yet

    def _writer(self) -> _NpyWriter:
        i, f = self.documents, self.val_fraction
        return self.val if math.floor((i + 1) * f) > math.floor(i * f) else self.train

    def write(self, ids: np.ndarray) -> None:
        """Append the ids of the next chunk, which may start or end in the middle of a document."""
        start = 0
        for end in np.flatnonzero(ids == self.separator_id) + 1:
            self._writer().write(ids[start:end])
            self.documents += 1
            start = end
        self._open = start < len(ids)
        if self._open:
            self._writer().write(ids[start:])

    def finish(self) -> None:
        """Count a last document without a separator; refuse a split that leaves a file empty."""
        if self._open:
            self.documents += 1
        for name, writer in (("training", self.train), ("validation", self.val)):
            if writer.count == 0:
                raise InputError(
                    f"the {name} split would be empty: the corpus has {self.documents:,} documents "
                    f"(separated by the tokenizer's first special token); change --val-fraction"
                )
        self.train.finish()
        self.val.finish()


def _encode_chunk(tokenizer: Tokenizer, offset: int, chunk: bytes) -> np.ndarray:
    return tokenizer.encode_array(decode_chunk(offset, chunk))


def _receive_ahead(connection: Connection) -> Callable[[], tuple[int, bytes] | None]:
    """Receive tasks on a thread of this worker and return the function that takes the next one.

    A task that carries a chunk's bytes is larger than the pipe holds: the parent sending it and this worker
    sending the ids of the previous chunk would each wait for the other to read, for ever. A thread that
    always reads lets the parent's send finish. EOF (the parent is gone) reads as the end of the tasks.
    """
    tasks: queue.SimpleQueue = queue.SimpleQueue()

    def receive() -> None:
        while True:
            try:
                task = connection.recv()
            except (EOFError, OSError):
                task = None
            tasks.put(task)
            if task is None:
                return

    threading.Thread(target=receive, daemon=True).start()
    return tasks.get


def _serve_chunks(
    connection: Connection, tokenizer: Tokenizer, corpus: str | os.PathLike | None, parent_pid: int
) -> None:
    """A worker's loop: read `(offset, size)`, encode that chunk of the corpus, send back the ids or the error.

    Without a corpus file (inputs joined by `lmkit.tokenizer.sources`) a task is `(offset, chunk bytes)`.
    """
    prepare_worker(parent_pid)  # Ctrl-C is the parent's to handle: it stops the workers
    next_task = connection.recv if corpus is not None else _receive_ahead(connection)
    with open(corpus, "rb") if corpus is not None else contextlib.nullcontext() as source:
        while (task := next_task()) is not None:
            offset, chunk = task
            try:
                if source is not None:
                    source.seek(offset)
                    chunk = source.read(chunk)
                connection.send((True, _encode_chunk(tokenizer, offset, chunk)))
            except Exception as err:  # the parent re-raises it
                connection.send((False, err))


class _ChunkWorkers:
    """Worker processes that encode chunks of the corpus, each reading its chunks from the file itself.

    Chunks go to the workers in turn and their ids are collected in the same turn, so they come back in
    corpus order, and workers given chunks of about the same size stay about equally busy. Only an offset
    and a size go to a worker, only ids (or an error) come back: no helper threads, no copies of the text.
    A corpus joined from several inputs, or decoded from JSON, Parquet or an archive, has no such file: then
    each chunk's bytes go to the worker, which receives them on a thread (see `_receive_ahead`).
    """

    def __init__(self, count: int, tokenizer: Tokenizer, corpus: str | os.PathLike | None) -> None:
        self.reads_file = corpus is not None  # else each task carries its chunk's bytes
        context = multiprocessing.get_context()
        self._connections: list[Connection] = []
        self._processes = []
        with start_workers():
            for _ in range(count):
                ours, theirs = context.Pipe()
                process = context.Process(
                    target=_serve_chunks, args=(theirs, tokenizer, corpus, os.getpid()), daemon=True
                )
                process.start()
                theirs.close()
                self._connections.append(ours)
                self._processes.append(process)
        self._submitted = self._collected = 0

    def submit(self, offset: int, chunk: int | bytes) -> None:
        """Give the next chunk (its size when the workers read the file, else its bytes) to the next worker."""
        index = self._submitted % len(self._connections)
        self._submitted += 1
        try:
            self._connections[index].send((offset, chunk))
        except OSError:  # a broken pipe: the worker is gone
            raise self._stopped(index) from None

    def collect(self) -> np.ndarray:
        """The ids of the oldest chunk not yet collected (raising the error its worker met)."""
        index = self._collected % len(self._connections)
        self._collected += 1
        try:
            ok, payload = self._connections[index].recv()
        except (EOFError, OSError):
            raise self._stopped(index) from None
        if not ok:
            raise payload
        return payload

    def _stopped(self, index: int) -> RuntimeError:
        process = self._processes[index]
        process.join(timeout=10)
        return RuntimeError(f"an encoding worker stopped unexpectedly (exit code {process.exitcode})")

    def close(self) -> None:
        """Stop the workers: politely once all is collected, at once otherwise (an error, Ctrl-C)."""
        finished = self._collected == self._submitted
        for connection, process in zip(self._connections, self._processes, strict=True):
            if finished:
                with contextlib.suppress(OSError):
                    connection.send(None)
            else:
                process.terminate()
        for connection, process in zip(self._connections, self._processes, strict=True):
            process.join()
            connection.close()


def _encoded_chunks(
    chunks: Iterable[tuple[int, bytes]],
    tokenizer: Tokenizer,
    workers: _ChunkWorkers | None,
    in_flight_limit: int,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield `(chunk bytes, ids)` in corpus order: in this process, or by `workers` with a bounded backlog."""
    if workers is None:
        for offset, chunk in chunks:
            yield len(chunk), _encode_chunk(tokenizer, offset, chunk)
        return
    sizes: deque[int] = deque()
    for offset, chunk in chunks:
        workers.submit(offset, len(chunk) if workers.reads_file else chunk)
        sizes.append(len(chunk))
        if len(sizes) > in_flight_limit:
            yield sizes.popleft(), workers.collect()
    while sizes:
        yield sizes.popleft(), workers.collect()


@contextlib.contextmanager
def encoded_chunks(
    corpus: str | os.PathLike, tokenizer: Tokenizer, workers: int = 1, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[Iterator[tuple[int, np.ndarray]]]:
    """Yield an iterator of `(chunk bytes, ids)` over the chunks of `corpus` in order, encoded by `workers`
    processes (in this one when 1), for readers that consume the ids as they come, such as `lmkit eval`.
    Enter it before starting threads (a progress bar): the workers are forked as it is entered."""
    with contextlib.ExitStack() as stack:
        pool = None
        if workers > 1:
            pool = _ChunkWorkers(workers, tokenizer, corpus)
            stack.callback(pool.close)
        source = stack.enter_context(open(corpus, "rb"))
        chunks = iter_chunks(source, tokenizer.special_tokens, chunk_bytes, tokenizer.pattern)
        yield _encoded_chunks(chunks, tokenizer, pool, 2 * workers)


def encode_file(
    corpus: Corpus | str | os.PathLike | Sequence[str | os.PathLike],
    tokenizer: Tokenizer,
    out: str | os.PathLike,
    *,
    workers: int = 1,
    val_fraction: float = 0.0,
    chunk_bytes: int = CHUNK_BYTES,
    show_progress: bool = True,
) -> dict[str, object]:
    """Encode `corpus` into `out` (or its train/val pair when `val_fraction` > 0); return a summary.

    `corpus` is a Corpus (`lmkit.tokenizer.sources`) or what `find_corpus` takes; paths found here get the
    tokenizer's first special token as the separator between documents.
    """
    corpus = as_corpus(corpus, tokenizer.special_tokens[0] if tokenizer.special_tokens else "")
    plain_file = corpus.plain_text_file()
    size = corpus_size(plain_file) if plain_file is not None else corpus.disk_bytes()
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if val_fraction > 0 and not tokenizer.special_tokens:
        raise InputError("--val-fraction splits documents at a special token, and this tokenizer has none")
    paths = list(split_paths(out)) if val_fraction > 0 else [Path(out)]
    for path in paths:
        check_output_path(path)
    if size is not None:  # workers for a single chunk cost more than they save
        workers = min(workers, math.ceil(size / chunk_bytes))
    dtype = tokenizer.dtype
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        # Workers start before the progress bar's drawing thread, so none is forked while it holds a lock.
        pool = None
        if workers > 1:
            pool = _ChunkWorkers(workers, tokenizer, plain_file)
            stack.callback(pool.close)
        writers = [_NpyWriter(stack.enter_context(atomic_write(path)), dtype) for path in paths]
        sink = writers[0]
        if val_fraction > 0:
            separator = tokenizer.special_ids[tokenizer.special_tokens[0]]
            sink = _DocumentSplitter(*writers, separator, val_fraction)
        bar = stack.enter_context(progress_bar("Encoding", total=size, unit="MB", scale=1e6, enabled=show_progress))
        if plain_file is not None:
            source, chunk_bar = stack.enter_context(open(plain_file, "rb")), bar
        else:  # the stream advances the bar by the bytes it reads from disk
            source, chunk_bar = open_corpus(corpus, bar), ProgressBar(None, None)
        chunks = iter_chunks(source, tokenizer.special_tokens, chunk_bytes, tokenizer.pattern)
        # Two chunks in flight per worker keep every worker busy while the oldest result is written.
        for chunk_size, ids in _encoded_chunks(chunks, tokenizer, pool, 2 * workers):
            sink.write(ids)
            chunk_bar.advance(chunk_size)
        size = size if plain_file is not None else source.bytes_read
        check_not_empty(corpus, size)
        sink.finish()
    seconds = time.perf_counter() - start
    tokens = sum(w.count for w in writers)
    summary: dict[str, object] = {
        "corpus": corpus.describe(),
        "output": ", ".join(map(str, paths)),
        "dtype": dtype.name,
        "bytes": size,
        "tokens": tokens,
        "bytes/token": size / max(tokens, 1),
        "seconds": round(seconds, 3),
        "MB/s": size / seconds / 1e6,
        "workers": workers,
    }
    if isinstance(sink, _DocumentSplitter):
        summary["documents"] = sink.documents
        summary["train tokens"], summary["val tokens"] = sink.train.count, sink.val.count
    return summary
