"""Pre-tokenization: splitting on special tokens, the GPT-2 regex, and cutting a file into safe chunks.

Everything here is shared by training and encoding, so both see exactly the same pre-tokens.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import AnyStr, BinaryIO

import regex

from lmkit.errors import InputError

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PRETOKEN_RE = regex.compile(GPT2_PATTERN)

# A chunk may end after "x\n" when another printable ASCII character follows: the pre-tokens on both
# sides are then the same as in the uncut text (a lone "\n" between two non-spaces is always its own
# pre-token, and nothing else can cross it). Used only where no special token gives a boundary.
_NEWLINE_CUT_RE = regex.compile(rb"[!-~]\n(?=[!-~])")


def check_special_tokens(special_tokens: Iterable[str] | None) -> list[str]:
    """Return the special tokens as a list without duplicates, in the order given; reject empty ones."""
    tokens: list[str] = []
    for token in special_tokens or []:
        if not token:
            raise InputError("a special token is empty; give a non-empty string such as '<|endoftext|>'")
        if token not in tokens:
            tokens.append(token)
    return tokens


class SpecialTokenFinder:
    """Finds special tokens in str or bytes as literals, preferring the longest where several start at one place.

    Each token is looked for with `find`, whose two-way search takes time linear in the text however long the
    token is; a regex alternation of the tokens compares the whole token again at every position of a run
    that almost matches it, which made a 10 KB special token over similar text take minutes.
    """

    def __init__(self, special_tokens: Iterable[str], *, as_bytes: bool = False) -> None:
        tokens = sorted(set(special_tokens), key=len, reverse=True)
        self.tokens: list[str] | list[bytes] = [t.encode("utf-8") for t in tokens] if as_bytes else tokens

    def spans(self, text: AnyStr) -> Iterator[tuple[int, int]]:
        """`(start, end)` of each special token in `text`, left to right, matches never overlapping."""
        upcoming = [text.find(token) for token in self.tokens]
        while True:
            found = [(start, i) for i, start in enumerate(upcoming) if start >= 0]
            if not found:
                return
            start, i = min(found)  # the earliest; at one place the lowest index, the longest token
            end = start + len(self.tokens[i])
            yield start, end
            for j, at in enumerate(upcoming):
                if 0 <= at < end:
                    upcoming[j] = text.find(self.tokens[j], end)

    def split(self, text: str) -> Iterator[tuple[str, bool]]:
        """Yield `(piece, is_special)` in order: the text between special tokens, and the special tokens."""
        start = 0
        for match_start, match_end in self.spans(text):
            if match_start > start:
                yield text[start:match_start], False
            yield text[match_start:match_end], True
            start = match_end
        if start < len(text):
            yield text[start:], False


def _printable_ascii(byte: int) -> bool:
    return 0x21 <= byte <= 0x7E


def _safe_cut(buffer: bytes, finder: SpecialTokenFinder, max_special: int) -> int:
    """The last offset in `buffer` (which starts at a true boundary) where the text may be cut, or 0.

    A cut after a special token is exact: the scan for special tokens starts at a true boundary and
    proceeds the same way the full text is split. A match is trusted only if the longest special token
    starting where it starts would still fit in the buffer (otherwise a longer one might win there).
    Without such a match, fall back to a newline between two printable ASCII characters (a lone "\n"
    between non-spaces is always its own pre-token) that no special token can overlap.
    """
    matches = list(finder.spans(buffer))
    usable = [(start, end) for start, end in matches if start + max_special <= len(buffer)]
    if usable:
        return usable[-1][1]
    limit = len(buffer) - max(max_special, 1)  # the byte after the newline must be in the buffer
    if matches:
        limit = min(limit, matches[0][0])
    pos = buffer.rfind(b"\n", 0, limit)
    while pos > 0:
        if _printable_ascii(buffer[pos - 1]) and _printable_ascii(buffer[pos + 1]):
            return pos + 1
        pos = buffer.rfind(b"\n", 0, pos)
    return 0


def iter_chunks(source: BinaryIO, special_tokens: Iterable[str], chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Stream a UTF-8 file as `(offset, chunk)` pairs of about `chunk_bytes`, each cut at a safe boundary.

    Boundaries fall after a special token, or failing that after a newline between printable characters,
    so pre-tokenizing the chunks one by one gives exactly the pre-tokens of the whole file. Memory stays
    bounded by a few chunks; a chunk grows only while no safe boundary is found.
    """
    tokens = list(special_tokens)
    finder = SpecialTokenFinder(tokens, as_bytes=True)
    max_special = max((len(t.encode("utf-8")) for t in tokens), default=0)
    offset, carry = 0, b""
    while True:
        block = source.read(chunk_bytes)
        buffer = carry + block if carry else block
        if not block:
            if buffer:
                yield offset, buffer
            return
        cut = _safe_cut(buffer, finder, max_special) if len(buffer) >= chunk_bytes else 0
        if cut == 0:
            carry = buffer
            continue
        yield offset, buffer[:cut]
        offset += cut
        carry = buffer[cut:]


def decode_chunk(offset: int, chunk: bytes) -> str:
    """Decode a chunk as UTF-8, raising InputError that names the absolute byte offset of bad input."""
    try:
        return chunk.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(
            f"the corpus is not UTF-8: invalid byte 0x{chunk[err.start]:02x} at byte {offset + err.start:,}; "
            "convert it to UTF-8 first (e.g. iconv -t utf-8)"
        ) from None


def corpus_size(path: str | os.PathLike) -> int:
    """The size in bytes of a corpus file, raising InputError if it is missing, a folder, or empty."""
    if not os.path.exists(path):
        raise InputError(f"corpus {path} does not exist")
    if os.path.isdir(path):
        raise InputError(f"corpus {path} is a folder; give a text file")
    size = os.path.getsize(path)
    if size == 0:
        raise InputError(f"corpus {path} is empty")
    return size
