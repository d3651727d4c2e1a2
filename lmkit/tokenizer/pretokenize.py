"""Pre-tokenization: splitting on special tokens, the pre-token patterns, and cutting a file into safe chunks.

Everything here is shared by training and encoding, so both see exactly the same pre-tokens.

A pattern is a preset name (`PRESETS`) or any regex; a tokenizer stores it by name where it is a preset.
The presets are the published ones: GPT-2's, cl100k_base's (`gpt4`), o200k_base's and Llama 3's, spelled
as tiktoken and Hugging Face `tokenizers` spell them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from typing import AnyStr, BinaryIO

import regex

from lmkit.errors import InputError

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PRETOKEN_RE = regex.compile(GPT2_PATTERN)

_O200K_LETTERS = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
)
# Preset name -> its regex, as tiktoken (gpt2, gpt4, o200k) and Llama 3's tokenizer.json (llama3) spell it.
PRESETS: dict[str, str] = {
    "gpt2": GPT2_PATTERN,
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
    "o200k": "|".join(
        [*_O200K_LETTERS, r"\p{N}{1,3}", r" ?[^\s\p{L}\p{N}]+[\r\n/]*", r"\s*[\r\n]+", r"\s+(?!\S)", r"\s+"]
    ),
    "llama3": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+""",
}
# Hugging Face `tokenizers` (Oniguruma) reads `{1,3}+` as "one or more groups of 1 to 3", not as a possessive
# `{1,3}`: tokenizer.json files spell gpt4's digit groups `\p{N}{1,3}`, which `regex` matches the same way.
HF_SPELLING: dict[str, str] = {"gpt4": PRESETS["gpt4"].replace(r"\p{N}{1,3}+", r"\p{N}{1,3}")}
_ONIGURUMA_DIFFERS = regex.compile(r"\{\d*,?\d*\}\+")

# A chunk may end after "x\n" when the character after the newline is of the same kind: the pre-tokens on
# both sides are then the same as in the uncut text (for GPT-2, a lone "\n" between two non-spaces is always
# its own pre-token; for the newer presets, one between two ASCII letters or digits). Used only where no
# special token gives a boundary; a custom regex is cut at special tokens only.
_NEWLINE_CUTS = {
    "gpt2": regex.compile(rb"[!-~]\n(?=[!-~])"),
    **{name: regex.compile(rb"[0-9A-Za-z]\n(?=[0-9A-Za-z])") for name in ("gpt4", "o200k", "llama3")},
}


def check_pattern(pattern: str) -> str:
    """The stored form of a pattern: a preset's name for a preset (named or spelled out), else the regex.

    InputError for a regex that does not compile, or one that Hugging Face `tokenizers` would read otherwise.
    """
    if pattern in PRESETS:
        return pattern
    for name, spelled in [*PRESETS.items(), *HF_SPELLING.items()]:
        if pattern == spelled:
            return name
    try:
        regex.compile(pattern)
    except (regex.error, ValueError) as err:
        raise InputError(
            f"pattern {pattern!r} is neither a preset ({', '.join(PRESETS)}) nor a valid regex: {err}"
        ) from None
    if _ONIGURUMA_DIFFERS.search(pattern):
        raise InputError(
            f"pattern {pattern!r} has a possessive {{n,m}}+, which Hugging Face tokenizers reads as a repetition; "
            "write {n,m} instead"
        )
    if regex.compile(pattern).match("") is not None:
        raise InputError(f"pattern {pattern!r} matches the empty string; every pre-token must hold a character")
    return pattern


def pattern_regex(pattern: str) -> str:
    """The regex of a stored pattern (a preset name or a regex)."""
    return PRESETS.get(pattern, pattern)


def hf_regex(pattern: str) -> str:
    """The regex as a tokenizer.json `Split` pre-tokenizer spells it (equal in Hugging Face `tokenizers`)."""
    return HF_SPELLING.get(pattern, pattern_regex(pattern))


@functools.cache
def pattern_findall(pattern: str) -> Callable[[str], list[str]]:
    """The pre-tokens of a stored pattern, for text without special tokens.

    Like Hugging Face's `Split(behavior="Isolated")`, text that a custom regex does not match is kept as
    pre-tokens of its own (the presets match every character, so for them this is `findall`).
    """
    compiled = regex.compile(pattern_regex(pattern))
    if pattern in PRESETS:
        return compiled.findall

    def split_isolated(text: str) -> list[str]:
        pieces, start = [], 0
        for match in compiled.finditer(text):
            if match.start() > start:
                pieces.append(text[start : match.start()])
            if match.end() > match.start():
                pieces.append(match.group())
            start = match.end()
        if start < len(text):
            pieces.append(text[start:])
        return pieces

    return split_isolated


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


def _safe_cut(buffer: bytes, finder: SpecialTokenFinder, max_special: int, pattern: str) -> int:
    """The last offset in `buffer` (which starts at a true boundary) where the text may be cut, or 0.

    A cut after a special token is exact: the scan for special tokens starts at a true boundary and
    proceeds the same way the full text is split. A match is trusted only if the longest special token
    starting where it starts would still fit in the buffer (otherwise a longer one might win there).
    Without such a match, fall back to a newline that the pattern always makes its own pre-token
    (`_NEWLINE_CUTS`) and that no special token can overlap.
    """
    matches = list(finder.spans(buffer))
    usable = [(start, end) for start, end in matches if start + max_special <= len(buffer)]
    if usable:
        return usable[-1][1]
    newline_cut = _NEWLINE_CUTS.get(pattern)
    if newline_cut is None:
        return 0
    limit = len(buffer) - max(max_special, 1)  # the byte after the newline must be in the buffer
    if matches:
        limit = min(limit, matches[0][0])
    pos = buffer.rfind(b"\n", 0, limit)
    while pos > 0:
        if newline_cut.match(buffer, pos - 1):
            return pos + 1
        pos = buffer.rfind(b"\n", 0, pos)
    return 0


def iter_chunks(
    source: BinaryIO, special_tokens: Iterable[str], chunk_bytes: int, pattern: str = "gpt2"
) -> Iterator[tuple[int, bytes]]:
    """Stream a UTF-8 file as `(offset, chunk)` pairs of about `chunk_bytes`, each cut at a safe boundary.

    Boundaries fall after a special token, or failing that after a newline that `pattern` (stored form, see
    `check_pattern`) always makes its own pre-token, so pre-tokenizing the chunks one by one gives exactly
    the pre-tokens of the whole file. Memory stays bounded by a few chunks; a chunk grows only while no
    safe boundary is found (with a custom regex, only special tokens give one).
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
        cut = _safe_cut(buffer, finder, max_special, pattern) if len(buffer) >= chunk_bytes else 0
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
