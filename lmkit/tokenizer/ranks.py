"""tiktoken rank files (`cl100k_base.tiktoken`: one `base64-token rank` per line) and the descriptor naming one.

A rank file holds no pattern and no special tokens, so lmkit reads it through a small TOML descriptor:

    ranks = "cl100k_base.tiktoken"   # relative to the descriptor
    pattern = "gpt4"                 # a preset (gpt2, gpt4, o200k, llama3) or a regex
    [special_tokens]
    "<|endoftext|>" = 100257

Such a tokenizer merges by tiktoken's rule: the adjacent pair whose concatenation has the lowest rank, and a
pre-token that is itself a token is that one token.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

import tomllib
from pydantic import BaseModel, ConfigDict, ValidationError

from lmkit.errors import InputError, validation_error_message
from lmkit.tokenizer.formats import Merges
from lmkit.tokenizer.pretokenize import check_pattern

RANKS_SUFFIX = ".tiktoken"


class RankFileDescriptor(BaseModel):
    """The TOML file that names a tiktoken rank file, its pre-token pattern and its special tokens."""

    model_config = ConfigDict(extra="forbid")

    ranks: str
    pattern: str
    special_tokens: dict[str, int] = {}


def read_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """The `token -> rank` table of a tiktoken rank file; InputError naming the line of a bad entry."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"rank file {path} does not exist" if not path.exists() else f"rank file {path} is not a file")
    ranks: dict[bytes, int] = {}
    seen_ranks: set[int] = set()
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except (IndexError, ValueError, binascii.Error):
            raise InputError(
                f"rank file {path}, line {number}: not 'base64-token rank' ({line[:60]!r}); is it a .tiktoken file?"
            ) from None
        if len(parts) != 2 or not token or rank < 0:
            raise InputError(f"rank file {path}, line {number}: not 'base64-token rank' ({line[:60]!r})")
        if token in ranks or rank in seen_ranks:
            what = f"token {token!r}" if token in ranks else f"rank {rank}"
            raise InputError(f"rank file {path}, line {number}: {what} appears twice; every token needs its own rank")
        ranks[token] = rank
        seen_ranks.add(rank)
    if not ranks:
        raise InputError(f"rank file {path} is empty")
    return ranks


def read_descriptor(path: str | os.PathLike) -> tuple[dict[bytes, int], str, dict[str, int]]:
    """`(ranks, pattern, special tokens -> ids)` from a TOML descriptor; InputError for a bad one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"tokenizer descriptor {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        descriptor = RankFileDescriptor.model_validate(raw)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"tokenizer descriptor {path} is not valid TOML ({err})") from None
    except ValidationError as err:
        raise InputError(f"tokenizer descriptor {path}: {validation_error_message(err)}") from None
    ranks = read_ranks(path.parent / descriptor.ranks)
    taken = set(ranks.values())
    for token, token_id in descriptor.special_tokens.items():
        if token_id in taken or token_id < 0:
            raise InputError(f"tokenizer descriptor {path}: special token {token!r} has id {token_id}, already taken")
        taken.add(token_id)
    return ranks, check_pattern(descriptor.pattern), descriptor.special_tokens


def merges_from_ranks(ranks: dict[bytes, int]) -> Merges:
    """A merge list for a tokenizer.json, made as Hugging Face's tiktoken converter makes it.

    For each token in rank order, every split into two tokens, ordered by the ranks of the halves. Merging
    by this list gives tiktoken's ids on vocabularies trained by BPE; on others the two rules can differ.
    """
    merges: Merges = []
    for token, _ in sorted(ranks.items(), key=lambda item: item[1]):
        splits = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges += sorted(splits, key=lambda pair: (ranks[pair[0]], ranks[pair[1]]))
    return merges
