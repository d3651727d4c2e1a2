"""GPT-2 references shared by the tokenizer and encoding tests: tiktoken built offline from the fixture files."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import tiktoken

FIXTURES = Path(__file__).parent / "fixtures"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"


def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, inverted (written out here, independent of lmkit)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


@cache
def tiktoken_gpt2() -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding, built from tests/fixtures/gpt2_vocab.json without the network."""
    decoder = _gpt2_byte_decoder()
    vocab = json.loads((FIXTURES / "gpt2_vocab.json").read_text(encoding="utf-8"))
    ranks = {bytes(decoder[c] for c in token): i for token, i in vocab.items() if token != EOT}
    return tiktoken.Encoding(
        "gpt2-offline", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: vocab[EOT]}
    )


def tiktoken_ids(text: str) -> list[int]:
    """GPT-2 ids of `text` from tiktoken, with `<|endoftext|>` as a special token."""
    return tiktoken_gpt2().encode(text, allowed_special={EOT})
