"""Corpus inputs: files, folders, globs and standard input; plain text, JSON Lines or Parquet; gzip or zstd.

`find_corpus` turns what the user typed into a `Corpus`: a list of input files, each with its record format
and compression. `open_corpus` reads a corpus as one stream of UTF-8 bytes, exactly the text a user would get
by concatenating the documents by hand with the separator between them: each JSON Lines record, each Parquet
row, and each text file (of several) is one document. Training and encoding cut that stream into chunks as
they cut a single file, so the results equal those of the concatenated text, for any number of workers.

Everything streams: text files and decompressed data are read in blocks, JSON Lines line by line, Parquet a
batch of rows at a time. One plain `.txt` file is read directly (`Corpus.plain_text_file`), so workers can
read their chunks from the file themselves; everything else is decoded in the calling process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import shutil
import sys
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lmkit.errors import InputError
from lmkit.fileio import parse_json
from lmkit.progress import ProgressBar

FORMATS = ("txt", "jsonl", "parquet")
COMPRESSIONS = ("gz", "zst")
_FORMAT_OF_SUFFIX = {".txt": "txt", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
BLOCK_BYTES = 1 << 20
# Compressed bytes fed to the zstd decompressor at once: a few MB of text come out of it.
_ZSTD_FEED_BYTES = 1 << 16
STDIN = "-"
PARQUET_HINT = 'reading Parquet needs pyarrow: pip install "lmkit[parquet]"'


@dataclass(frozen=True)
class InputFile:
    """One input: a file (or standard input when `path` is None), its record format and its compression."""

    path: Path | None
    format: str  # one of FORMATS
    compression: str | None  # one of COMPRESSIONS, or None

    @property
    def name(self) -> str:
        """The name to show in messages."""
        return "standard input" if self.path is None else str(self.path)

    def disk_bytes(self) -> int | None:
        """The size on disk (None for standard input or a pipe)."""
        if self.path is None or not self.path.is_file():
            return None
        return self.path.stat().st_size


@dataclass(frozen=True)
class Corpus:
    """The inputs of a corpus, the JSON/Parquet field holding the text, and the separator between documents.

    A separator of None stands for the default, the first special token of the training or the tokenizer.
    """

    files: tuple[InputFile, ...]
    text_field: str = "text"
    separator: str | None = None

    def plain_text_file(self) -> Path | None:
        """The path when the corpus is one uncompressed text file on disk (the fast path: read by offsets)."""
        if len(self.files) != 1:
            return None
        only = self.files[0]
        plain = only.format == "txt" and only.compression is None and only.path is not None
        return only.path if plain and only.path.is_file() else None

    def disk_bytes(self) -> int | None:
        """The total size of the inputs on disk, what the progress bar counts (None if one is a stream)."""
        sizes = [f.disk_bytes() for f in self.files]
        return None if None in sizes else sum(sizes)

    def describe(self) -> str:
        """The inputs in a few words: the one name, or the first name and how many files there are."""
        if len(self.files) == 1:
            return self.files[0].name
        return f"{self.files[0].name} and {len(self.files) - 1:,} more files"


def parse_format(text: str) -> tuple[str, str | None]:
    """Split a `--format` value such as `jsonl` or `jsonl.zst` into (format, compression)."""
    fmt, _, compression = text.lower().partition(".")
    if fmt not in FORMATS or (compression and compression not in COMPRESSIONS):
        raise InputError(
            f"--format must be one of {', '.join(FORMATS)}, optionally followed by .gz or .zst "
            f"(e.g. jsonl.zst), got {text!r}"
        )
    return fmt, compression or None


def _classify(path: Path) -> tuple[str | None, str | None]:
    """(format, compression) from a file name; the format is None for an unknown extension."""
    name = path.name.lower()
    compression = next((c for c in COMPRESSIONS if name.endswith(f".{c}")), None)
    if compression:
        name = name[: -len(compression) - 1]
    return _FORMAT_OF_SUFFIX.get(Path(name).suffix), compression


def _input_file(path: Path, forced: tuple[str, str | None] | None, in_folder: bool) -> InputFile | None:
    """The input for `path`; None for a file in a folder whose extension says nothing (skipped). InputError
    for what is not a readable regular file."""
    fmt, compression = _classify(path)
    if in_folder and fmt is None and forced is None:
        return None
    _check_readable_file(path)
    if forced is not None:
        return InputFile(path, forced[0], forced[1] or compression)
    if fmt is None:
        if in_folder:
            return None
        fmt = "txt"  # a file named on the command line is text unless its name says otherwise
    return InputFile(path, fmt, compression)


def _check_readable_file(path: Path) -> None:
    """InputError unless `path` is a regular file this process can open: a FIFO or a device (`/dev/zero`)
    would be read forever, and an unreadable file would fail halfway through a long job."""
    if not path.is_file():
        raise InputError(
            f"corpus {path} is not a regular file (a pipe or a device?); give a file, or - for standard input"
        )
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror}") from None


def _folder_files(folder: Path, forced: tuple[str, str | None] | None) -> list[InputFile]:
    """The files under `folder` in sorted order, recursively, skipping hidden ones and unknown extensions."""
    found: list[InputFile] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            item = _input_file(Path(root) / name, forced, in_folder=True)
            if item is not None:
                found.append(item)
    if not found:
        known = ", ".join(sorted(_FORMAT_OF_SUFFIX))
        raise InputError(
            f"folder {folder} holds no corpus files (looked for {known}, also as .gz or .zst); "
            "give --format to read other files"
        )
    return found


def _expand(argument: str, forced: tuple[str, str | None] | None) -> list[InputFile]:
    """The inputs one command-line argument stands for: a file, a folder, a glob or `-`."""
    if argument == STDIN:
        return [InputFile(None, *(forced or ("txt", None)))]
    path = Path(argument)
    if path.is_dir():
        return _folder_files(path, forced)
    if path.exists():
        return [_input_file(path, forced, in_folder=False)]
    if any(c in argument for c in "*?["):
        matches = sorted(glob.glob(argument, recursive=True))
        if not matches:
            raise InputError(f"no file matches {argument}")
        return [item for match in matches for item in _expand(match, forced)]
    raise InputError(f"corpus {argument} does not exist")


def find_corpus(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    input_format: str | None = None,
    text_field: str = "text",
    separator: str | None = None,
) -> Corpus:
    """Resolve files, folders (their files, sorted, recursively), globs and `-` (standard input) into a Corpus.

    Formats come from the extensions (.txt; .jsonl, .json, .ndjson; .parquet; each also as .gz or .zst), or
    from `input_format` (e.g. "jsonl" or "jsonl.zst") for every input. A file named directly with another
    extension is text; in a folder it is skipped. Raises InputError for a path that does not exist, a glob
    that matches nothing, a folder with no corpus files, or `-` given twice. `separator` goes between
    documents ("" for none; None for the first special token, decided by training or encoding).
    """
    arguments = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not arguments:
        raise InputError("give at least one corpus file, folder or glob")
    if not text_field:
        raise InputError("--text-field is empty; give the name of the field holding the text")
    forced = parse_format(input_format) if input_format else None
    files = [item for argument in arguments for item in _expand(os.fspath(argument), forced)]
    if sum(f.path is None for f in files) > 1:
        raise InputError("standard input (-) can be read only once")
    return Corpus(tuple(files), text_field, separator)


def as_corpus(inputs: Corpus | str | os.PathLike | Sequence[str | os.PathLike], default_separator: str) -> Corpus:
    """`inputs` as a Corpus (found with the formats their names say), its separator decided."""
    corpus = inputs if isinstance(inputs, Corpus) else find_corpus(inputs)
    if corpus.separator is None:
        corpus = dataclasses.replace(corpus, separator=default_separator)
    return corpus


# --- reading ----------------------------------------------------------------------------------------------


class _Metered:
    """A binary file whose reads advance a progress bar by the bytes read (compressed bytes, for archives)."""

    def __init__(self, handle: BinaryIO, bar: ProgressBar) -> None:
        self._handle, self._bar = handle, bar

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._bar.advance(len(data))
        return data


class _ZstdReader:
    """Decompresses a zstd stream of one or more frames; a stream that stops inside a frame is an error.

    (zstandard's `stream_reader` ends quietly at a truncated frame, so frames are fed by hand.)
    """

    def __init__(self, raw: _Metered) -> None:
        import zstandard

        self._raw, self._context = raw, zstandard.ZstdDecompressor()
        self._frame = self._context.decompressobj()
        self._inside_frame = False

    def read(self, size: int = -1) -> bytes:
        """The next decompressed bytes (any amount; empty at the end)."""
        while data := self._raw.read(_ZSTD_FEED_BYTES):
            out = [self._frame.decompress(data)]
            self._inside_frame = not self._frame.eof
            while self._frame.eof and self._frame.unused_data:  # the next frame starts in this block
                rest = self._frame.unused_data
                self._frame = self._context.decompressobj()
                out.append(self._frame.decompress(rest))
                self._inside_frame = not self._frame.eof
            if any(out):
                return b"".join(out)
        if self._inside_frame:
            raise EOFError("the file ends inside a zstd frame (truncated?)")
        return b""


def _decompression_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error)
    with contextlib.suppress(ImportError):
        import zstandard

        errors += (zstandard.ZstdError,)
    return errors


@contextlib.contextmanager
def _open_binary(item: InputFile, bar: ProgressBar) -> Iterator[BinaryIO]:
    """The decompressed bytes of an input, read in blocks; reading advances `bar` by the bytes on disk."""
    try:
        handle = sys.stdin.buffer if item.path is None else open(item.path, "rb")
    except OSError as err:
        raise InputError(f"cannot read {item.name}: {err.strerror}") from None
    with handle if item.path is not None else contextlib.nullcontext(handle):
        raw = _Metered(handle, bar)
        if item.compression == "gz":
            import gzip

            yield gzip.GzipFile(fileobj=raw, mode="rb")
        elif item.compression == "zst":
            yield _ZstdReader(raw)
        else:
            yield raw


def _check_utf8(data: bytes, offset: int, name: str, at_end: bool) -> int:
    """How much of `data` (which starts at byte `offset` of file `name`) is whole UTF-8 characters.

    A character cut by the end of the block is left for the next block; anything else that is not UTF-8
    raises InputError naming the file and the byte offset.
    """
    try:
        data.decode("utf-8")
        return len(data)
    except UnicodeDecodeError as err:
        if err.reason == "unexpected end of data" and not at_end:
            return err.start
        raise InputError(
            f"{name} is not UTF-8: invalid byte 0x{data[err.start]:02x} at byte {offset + err.start:,}; "
            "convert it to UTF-8 first (e.g. iconv -t utf-8)"
        ) from None


def _text_document(item: InputFile, bar: ProgressBar) -> Iterator[bytes]:
    """A text file as one document, in blocks of whole UTF-8 characters."""
    with _open_binary(item, bar) as source:
        offset, carry = 0, b""
        while True:
            block = source.read(BLOCK_BYTES)
            data = carry + block if carry else block
            whole = _check_utf8(data, offset, item.name, at_end=not block)
            if whole:
                yield data[:whole]
            if not block:
                return
            offset, carry = offset + whole, data[whole:]


_JSON_TYPES = {dict: "an object", list: "an array", int: "a number", float: "a number", bool: "true/false"}


def _record_text(line: bytes, name: str, line_number: int, field: str) -> bytes:
    """The UTF-8 text in `field` of one JSON Lines record, or InputError naming the file and line."""
    where = f"{name} line {line_number:,}"
    record = parse_json(line, where)
    if not isinstance(record, dict):
        raise InputError(f"{where}: not a JSON object (JSON Lines hold one object per line, e.g. {{\"{field}\": ...}})")
    if field not in record:
        raise InputError(f'{where}: no "{field}" field; name the field holding the text with --text-field')
    text = record[field]
    if not isinstance(text, str):
        kind = "null" if text is None else _JSON_TYPES.get(type(text), type(text).__name__)
        raise InputError(f'{where}: the "{field}" field is {kind}, not a string')
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f'{where}: the "{field}" field holds an unpaired surrogate (\\ud800-\\udfff)') from None


def _numbered_lines(item: InputFile, bar: ProgressBar) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of each non-blank line of a (decompressed) file."""
    with _open_binary(item, bar) as source:
        line_number, carry = 0, b""
        while True:
            block = source.read(BLOCK_BYTES)
            lines = (carry + block).split(b"\n")
            carry = lines.pop() if block else b""
            for line in lines:
                line_number += 1
                if line.strip():
                    yield line_number, line
            if not block:
                return


def jsonl_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of each non-blank line of the JSON Lines file `path` (also .gz or .zst);
    InputError for a path that is not a readable file."""
    item = _input_file(Path(path), None, in_folder=False)
    yield from _numbered_lines(item, ProgressBar(None, None))


def _jsonl_documents(item: InputFile, field: str, bar: ProgressBar) -> Iterator[tuple[bytes]]:
    """Each non-blank line of a JSON Lines file as one document."""
    for line_number, line in _numbered_lines(item, bar):
        yield (_record_text(line, item.name, line_number, field),)


@contextlib.contextmanager
def _seekable_parquet(item: InputFile, bar: ProgressBar) -> Iterator[str | BinaryIO]:
    """A Parquet file on disk as its path; a compressed one or standard input copied to a temporary file.

    Parquet keeps its index at the end of the file, so it cannot be read as a stream.
    """
    if item.compression is None and item.path is not None and item.path.is_file():
        yield str(item.path)
        return
    with _open_binary(item, bar) as source, tempfile.TemporaryFile() as copy:
        shutil.copyfileobj(source, copy, BLOCK_BYTES)
        copy.seek(0)
        yield copy


def _parquet_documents(item: InputFile, field: str, bar: ProgressBar) -> Iterator[tuple[bytes]]:
    """Each row's `field` of a Parquet file as one document, a batch of rows at a time."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{item.name}: {PARQUET_HINT}") from None
    with _seekable_parquet(item, bar) as source:
        try:
            table = pq.ParquetFile(source)
        except (pa.ArrowException, OSError) as err:
            raise InputError(f"{item.name} is not a valid Parquet file ({err})") from None
        schema = table.schema_arrow
        if field not in schema.names:
            raise InputError(
                f'{item.name} has no column "{field}" (its columns: {", ".join(schema.names)}); '
                "name the text column with --text-field"
            )
        column_type = schema.field(field).type
        string_types = (pa.types.is_string, pa.types.is_large_string, getattr(pa.types, "is_string_view", None))
        if not any(is_type(column_type) for is_type in string_types if is_type):
            raise InputError(f'{item.name}: column "{field}" holds {column_type}, not strings')
        # Progress for a file read in place goes by rows; a copied one was counted while copying.
        rows_total = max(table.metadata.num_rows, 1) if isinstance(source, str) else 0
        size, counted, row = item.disk_bytes() or 0, 0, 0
        for batch in table.iter_batches(batch_size=8192, columns=[field]):
            values = batch.column(0)
            if values.null_count:
                first_null = values.is_null().index(True).as_py()
                raise InputError(f'{item.name} row {row + first_null:,}: the "{field}" value is null')
            for text in values.to_pylist():
                yield (text.encode("utf-8"),)
            row += len(values)
            if rows_total:
                done = size * row // rows_total
                bar.advance(done - counted)
                counted = done


def _documents(item: InputFile, field: str, bar: ProgressBar) -> Iterator[Iterable[bytes]]:
    """The documents of one input, each as pieces of UTF-8 bytes."""
    if item.format == "txt":
        yield _text_document(item, bar)
    elif item.format == "jsonl":
        yield from _jsonl_documents(item, field, bar)
    else:
        yield from _parquet_documents(item, field, bar)


def _joined_pieces(corpus: Corpus, bar: ProgressBar) -> Iterator[bytes]:
    """The documents of all inputs, in order, with the separator between each two."""
    separator = (corpus.separator or "").encode("utf-8")
    errors = _decompression_errors()
    first = True
    for item in corpus.files:
        try:
            for document in _documents(item, corpus.text_field, bar):
                if separator and not first:
                    yield separator
                first = False
                yield from document
        except errors as err:
            what = {"gz": "gzip", "zst": "zstd"}.get(item.compression or "", "")
            detail = getattr(err, "strerror", None) or str(err) or type(err).__name__
            problem = f"is not a valid {what} file" if what else "cannot be read"
            raise InputError(f"{item.name} {problem} ({detail})") from None


class CorpusStream:
    """The corpus as one binary stream: `read(size)` returns `size` bytes, fewer only at the end."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces, self._rest = pieces, b""
        self.bytes_read = 0

    def read(self, size: int) -> bytes:
        """The next `size` bytes of the joined text (fewer at the end, empty after it)."""
        parts, have = [self._rest], len(self._rest)
        while have < size:
            piece = next(self._pieces, None)
            if piece is None:
                break
            parts.append(piece)
            have += len(piece)
        data = b"".join(parts)
        out, self._rest = data[:size], data[size:]
        self.bytes_read += len(out)
        return out


def open_corpus(corpus: Corpus, bar: ProgressBar) -> CorpusStream:
    """The corpus's documents as one stream of UTF-8 bytes, joined by its separator.

    Reading it advances `bar` by the bytes read from disk; bad input raises InputError while it is read.
    """
    return CorpusStream(_joined_pieces(corpus, bar))


def check_not_empty(corpus: Corpus, text_bytes: int) -> None:
    """Raise InputError when reading the corpus gave no text at all."""
    if text_bytes == 0:
        raise InputError(f"the corpus is empty: {corpus.describe()} holds no text")
