"""Tokenizer files: the HuggingFace `tokenizer.json` layout for byte-level BPE, and GPT-2's vocab.json + merges.txt.

A tokenizer here is three plain values: `vocab` (id -> bytes, special tokens included), `merges` (pairs of
bytes in rank order) and `special_tokens` (strings). Token strings in the files use GPT-2's byte-to-unicode
mapping, so every byte sequence has a printable spelling (a space is "Ġ").
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from lmkit.errors import InputError
from lmkit.fileio import atomic_write, parse_json
from lmkit.tokenizer.pretokenize import check_pattern, hf_regex

Vocab = dict[int, bytes]
Merges = list[tuple[bytes, bytes]]


@cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte to a printable character."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


@cache
def unicode_to_byte() -> dict[str, int]:
    """The inverse of `byte_to_unicode`."""
    return {c: b for b, c in byte_to_unicode().items()}


def token_to_str(token: bytes) -> str:
    """Spell a token's bytes in GPT-2's byte-level alphabet."""
    # Latin-1 turns byte b into chr(b), which the table maps to its spelling: all in C, even for long tokens.
    return token.decode("latin-1").translate(byte_to_unicode())


def str_to_token(text: str) -> bytes | None:
    """Read a byte-level spelling back into bytes; None if it holds a character outside the alphabet."""
    table = unicode_to_byte()
    try:
        return bytes(table[c] for c in text)
    except KeyError:
        return None


def special_token_ids(vocab: Vocab, special_tokens: list[str]) -> dict[str, int]:
    """The id of each special token in `vocab` (looked up by its UTF-8 bytes)."""
    by_bytes = {}
    for token_id, token in vocab.items():
        by_bytes.setdefault(token, token_id)
    return {t: by_bytes[t.encode("utf-8")] for t in special_tokens}


@dataclass(frozen=True)
class Layout:
    """How a tokenizer.json cuts text before BPE, and what its post-processor adds.

    `pattern`: a preset name or a regex (see `check_pattern`). `ignore_merges`: a pre-token that is itself
    in the vocabulary is one token, whatever the merges say. `bos_token`: the token the post-processor puts
    before each text (lmkit's `encode` adds none, like `tokenizers` with `add_special_tokens=False`).
    """

    pattern: str = "gpt2"
    ignore_merges: bool = False
    bos_token: str | None = None


def _pre_tokenizer(pattern: str) -> dict:
    """GPT-2's ByteLevel with its own regex, or a Split on the pattern before a ByteLevel without one."""
    if pattern == "gpt2":
        return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    split = {"type": "Split", "pattern": {"Regex": hf_regex(pattern)}, "behavior": "Isolated", "invert": False}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    return {"type": "Sequence", "pretokenizers": [split, byte_level]}


def _post_processor(bos_token: str | None, bos_id: int | None) -> dict | None:
    if bos_token is None:
        return None
    return {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos_token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            {"SpecialToken": {"id": bos_token, "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": bos_token, "type_id": 1}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {bos_token: {"id": bos_token, "ids": [bos_id], "tokens": [bos_token]}},
    }


def to_hf_json(vocab: Vocab, merges: Merges, special_tokens: list[str], layout: Layout = Layout()) -> dict:
    """The tokenizer as a HuggingFace `tokenizer.json` object (byte-level BPE, pre-tokenizer per `layout`).

    Special tokens go in `added_tokens`, and in the model vocab under their own text: `tokenizers` looks
    an added token up there by its content and would otherwise give it a new id. Where two ids share the
    same bytes (BPE can reach one string by two merge paths), the file keeps the lower id: a JSON object
    cannot hold the key twice.
    """
    specials = special_token_ids(vocab, special_tokens)
    special_id_set = set(specials.values())
    model_vocab: dict[str, int] = {}
    for token_id in sorted(vocab):
        if token_id not in special_id_set:
            model_vocab.setdefault(token_to_str(vocab[token_id]), token_id)
    model_vocab.update(specials)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    bos_id = specials.get(layout.bos_token) if layout.bos_token is not None else None
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": token_id,
                "content": content,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for content, token_id in specials.items()
        ],
        "normalizer": None,
        "pre_tokenizer": _pre_tokenizer(layout.pattern),
        "post_processor": _post_processor(layout.bos_token, bos_id),
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": layout.ignore_merges,
            "vocab": model_vocab,
            "merges": [[token_to_str(a), token_to_str(b)] for a, b in merges],
        },
    }


# Token ids are stored as uint32 at most (token arrays, HF tokenizers' u32); ids must also number the
# tokens without wide gaps, since every table indexed by id (embeddings, lookups) has max id + 1 rows.
MAX_ID = (1 << 32) - 1
_ALLOWED_GAP = 1 << 16


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _clip(value: object, limit: int = 80) -> str:
    """A value's repr, cut short: a message stays one readable line whatever the file holds."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _add_token(vocab: Vocab, token_id: int, token: bytes, source: str) -> None:
    """Put `token` at `token_id`, refusing an id that another token already holds."""
    if token_id in vocab and vocab[token_id] != token:
        raise InputError(
            f"{source}: id {token_id} is given to two tokens ({_clip(token_to_str(vocab[token_id]))} and "
            f"{_clip(token_to_str(token))}); every token needs its own id"
        )
    vocab[token_id] = token


def check_ids(vocab: Vocab, source: str) -> None:
    """InputError for a negative id, one above MAX_ID, or ids whose largest leaves a gap wider than _ALLOWED_GAP."""
    if not vocab:
        raise InputError(f"{source}: the vocabulary is empty")
    low, high = min(vocab), max(vocab)
    if low < 0 or high > MAX_ID:
        raise InputError(f"{source}: token id {low if low < 0 else high} is outside 0..{MAX_ID}")
    if high >= len(vocab) + _ALLOWED_GAP:
        raise InputError(
            f"{source}: the largest token id is {high:,} but there are only {len(vocab):,} tokens; "
            "ids should number the tokens from 0 without wide gaps"
        )


def _merge_pair(entry: object) -> tuple[str, str] | None:
    """A merge entry as two strings: `["a", "b"]` (current layout) or `"a b"` (older layout)."""
    if isinstance(entry, str):
        parts = entry.split(" ")
        return (parts[0], parts[1]) if len(parts) == 2 else None
    if isinstance(entry, list) and len(entry) == 2 and all(isinstance(p, str) for p in entry):
        return entry[0], entry[1]
    return None


def _refuse(source: str, part: str) -> InputError:
    return InputError(f"{source}: {part} is not supported; lmkit would give other ids than Hugging Face tokenizers")


def _read_pattern(pre: object, source: str) -> str:
    """The pattern of a pre_tokenizer: GPT-2's ByteLevel, or Sequence[Split(Regex, Isolated), ByteLevel(no regex)]."""
    if not isinstance(pre, dict):
        raise _refuse(source, f"pre_tokenizer {_clip(pre)}")
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
        raise _refuse(source, f"pre_tokenizer {_clip(pre)}")
    *splits, last = steps or [{}]
    if last.get("type") != "ByteLevel" or last.get("add_prefix_space", False):
        raise _refuse(source, f"a pre_tokenizer ending in {_clip(last.get('type'))} (not a plain ByteLevel)")
    if last.get("use_regex", True):
        if splits:
            raise _refuse(source, "a Split before a ByteLevel pre-tokenizer that also splits (use_regex)")
        return "gpt2"
    split = splits[0] if len(splits) == 1 else {}
    regex_text = split.get("pattern", {}).get("Regex") if isinstance(split.get("pattern"), dict) else None
    if split.get("type") != "Split" or split.get("behavior") != "Isolated" or split.get("invert") or not regex_text:
        raise _refuse(source, f"pre_tokenizer {_clip(pre, 160)} (lmkit reads one Split(Regex, Isolated) + ByteLevel)")
    try:
        return check_pattern(regex_text)
    except InputError as err:
        raise InputError(f"{source}: {err}") from None


def _read_bos(post: object, source: str) -> str | None:
    """The token a post_processor puts before each text (None if it adds nothing); refuse anything else."""
    if post is None:
        return None
    steps = post.get("processors") if isinstance(post, dict) and post.get("type") == "Sequence" else [post]
    bos = None
    for step in steps if isinstance(steps, list) else [steps]:
        kind = step.get("type") if isinstance(step, dict) else None
        if kind == "ByteLevel":
            continue  # it only adjusts offsets
        if kind != "TemplateProcessing" or not isinstance(step.get("single"), list):
            raise _refuse(source, f"post_processor {_clip(kind)}")
        added = [item["SpecialToken"].get("id") for item in step["single"] if "SpecialToken" in item]
        if len(step["single"]) != len(added) + 1 or (added and "SpecialToken" not in step["single"][0]):
            raise _refuse(source, f"a post_processor adding {_clip(added)} after the text")
        if len(added) > 1:
            raise _refuse(source, f"a post_processor adding {_clip(added)}")
        bos = added[0] if added else bos
    return bos


def hf_layout(obj: dict, source: str = "tokenizer file") -> Layout:
    """The `Layout` of a parsed tokenizer.json; InputError naming the first part lmkit cannot reproduce exactly."""
    normalizer = obj.get("normalizer")
    if normalizer is not None:
        raise _refuse(
            source, f"the normalizer {_clip(normalizer.get('type') if isinstance(normalizer, dict) else normalizer)}"
        )
    model = obj["model"]
    for key in ("byte_fallback", "dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise _refuse(source, f"model.{key} = {_clip(model[key])}")
    return Layout(
        pattern=_read_pattern(obj.get("pre_tokenizer"), source),
        ignore_merges=bool(model.get("ignore_merges")),
        bos_token=_read_bos(obj.get("post_processor"), source),
    )


def from_hf_json(obj: object, source: str = "tokenizer file") -> tuple[Vocab, Merges, list[str]]:
    """Read `(vocab, merges, special_tokens)` from a parsed `tokenizer.json`; InputError if it is not one."""
    model = obj.get("model") if isinstance(obj, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise InputError(f"{source} is not a byte-level BPE tokenizer.json (no BPE model with a vocab)")
    if obj.get("version") != "1.0":
        raise InputError(f"{source} has tokenizer.json version {obj.get('version')!r}; only '1.0' is supported")
    hf_layout(obj, source)
    added_tokens = obj.get("added_tokens") or []
    if not isinstance(added_tokens, list):
        raise InputError(f"{source}: added_tokens is not a list")
    added_contents = {a.get("content") for a in added_tokens if isinstance(a, dict)}
    vocab: Vocab = {}
    for text, token_id in model["vocab"].items():
        if text in added_contents:
            continue  # spelled as plain text, not in the byte-level alphabet; read from added_tokens below
        token = str_to_token(text)
        if token is None or not _is_id(token_id):
            raise InputError(f"{source}: vocab entry {_clip(text)} is not a byte-level token with an integer id")
        _add_token(vocab, token_id, token, source)
    special_tokens = []
    for added in added_tokens:
        if not isinstance(added, dict) or not _is_id(added.get("id")) or not isinstance(added.get("content"), str):
            raise InputError(f"{source}: malformed entry in added_tokens: {_clip(added)}")
        if not added["content"]:
            raise InputError(f"{source}: an entry in added_tokens has empty content")
        _add_token(vocab, added["id"], added["content"].encode("utf-8"), source)
        special_tokens.append(added["content"])
    check_ids(vocab, source)
    raw_merges = model.get("merges") or []
    if not isinstance(raw_merges, list):
        raise InputError(f"{source}: model.merges is not a list")
    merges = []
    for entry in raw_merges:
        pair = _merge_pair(entry)
        a, b = (None, None) if pair is None else (str_to_token(pair[0]), str_to_token(pair[1]))
        if a is None or b is None:
            raise InputError(f"{source}: malformed merge {_clip(entry)}")
        merges.append((a, b))
    return vocab, merges, special_tokens


def _read_json(path: str | os.PathLike, what: str) -> object:
    """Parse a JSON file, turning a missing, unreadable or corrupt file into one clear InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    return parse_json(path.read_bytes(), f"{what} {path}")

def save_tokenizer(
    path: str | os.PathLike, vocab: Vocab, merges: Merges, special_tokens: list[str], layout: Layout = Layout()
) -> None:
    """Write the tokenizer as one `tokenizer.json` file, atomically."""
    text = json.dumps(to_hf_json(vocab, merges, special_tokens, layout), ensure_ascii=False, indent=1)
    with atomic_write(path, "w") as handle:
        handle.write(text)


def load_tokenizer(path: str | os.PathLike) -> tuple[Vocab, Merges, list[str], Layout]:
    """Read `(vocab, merges, special_tokens, layout)` from a `tokenizer.json` file."""
    obj = _read_json(path, "tokenizer file")
    return (*from_hf_json(obj, source=str(path)), hf_layout(obj, str(path)))


def read_gpt2_files(vocab_path: str | os.PathLike, merges_path: str | os.PathLike) -> tuple[Vocab, Merges]:
    """Read GPT-2's `vocab.json` and `merges.txt`.

    Lines of merges.txt that are not two tokens (the `#version` header, blank lines) are skipped; the
    caller drops merges whose halves or product are not in the vocabulary.
    """
    raw_vocab = _read_json(vocab_path, "vocab file")
    if not isinstance(raw_vocab, dict):
        raise InputError(f"vocab file {vocab_path} is not a JSON object of token -> id")
    vocab: Vocab = {}
    for text, token_id in raw_vocab.items():
        if not _is_id(token_id):
            raise InputError(f"vocab file {vocab_path}: token {_clip(text)} has id {_clip(token_id)}, not an integer")
        token = str_to_token(text)
        _add_token(vocab, token_id, token if token is not None else text.encode("utf-8"), f"vocab file {vocab_path}")
    check_ids(vocab, f"vocab file {vocab_path}")
    path = Path(merges_path)
    if not path.is_file():
        raise InputError(f"merges file {path} does not exist")
    merges: Merges = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split(" ")
        if len(parts) != 2 or line.startswith("#version"):
            continue
        a, b = str_to_token(parts[0]), str_to_token(parts[1])
        if a is not None and b is not None:
            merges.append((a, b))
    return vocab, merges


def write_gpt2_files(folder: str | os.PathLike, vocab: Vocab, merges: Merges) -> None:
    """Write GPT-2-style `vocab.json` and `merges.txt` into `folder`, atomically each."""
    folder = Path(folder)
    spelled = {}
    for token_id in sorted(vocab):
        spelled.setdefault(token_to_str(vocab[token_id]), token_id)
    with atomic_write(folder / "vocab.json", "w") as handle:
        json.dump(spelled, handle, ensure_ascii=False)
    with atomic_write(folder / "merges.txt", "w") as handle:
        handle.write("#version: 0.2\n")
        handle.writelines(f"{token_to_str(a)} {token_to_str(b)}\n" for a, b in merges)
