"""`Tokenizer`: byte-level BPE encoding and decoding with a vocabulary, merges and special tokens.

Encoding splits the text on special tokens, cuts the rest into pre-tokens (GPT-2's pattern, another preset or
a regex: see `lmkit.tokenizer.pretokenize`), and turns each pre-token into ids by repeatedly merging its
adjacent pair of lowest merge rank (with `ignore_merges`, a pre-token in the vocabulary is one token).
Most pre-tokens repeat, so the ids of each pre-token are cached; a pre-token seen for the first time is
merged with a rank lookup per adjacent pair, never a scan of the merge list. The pre-tokens a text brings
for the first time are merged together, vectorized (`batch_merge.py`), when there are many of them. The
cache holds ids packed as machine integers (uint16 or uint32, like the `.npy` files), so the ids of a whole
text are one `bytes.join` of cached values.
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Iterable, Iterator
from itertools import repeat
from pathlib import Path

import numpy as np
import regex

from lmkit.errors import InputError
from lmkit.fileio import parse_json
from lmkit.tokenizer.batch_merge import BatchMerger, in_creation_order
from lmkit.tokenizer.fast_pretokenize import pretoken_finder
from lmkit.tokenizer.formats import (
    Layout,
    Merges,
    Vocab,
    from_hf_json,
    hf_layout,
    load_tokenizer,
    read_gpt2_files,
    save_tokenizer,
    to_hf_json,
)
from lmkit.tokenizer.pretokenize import SpecialTokenFinder, check_pattern, check_special_tokens, iter_chunks
from lmkit.tokenizer.ranks import RANKS_SUFFIX, merges_from_ranks, read_descriptor

TOKENIZER_FILE = "tokenizer.json"
GPT2_VOCAB_FILE, GPT2_MERGES_FILE = "vocab.json", "merges.txt"
_GPT2_SPECIAL = regex.compile(rb"<\|[^|\s]+\|>")
# Bounds the pre-token cache (about 150 bytes an entry): enough for every common word of a large corpus.
_CACHE_LIMIT = 1 << 19
_NO_MERGE = 1 << 62
# Below this many new pre-tokens, merging them one by one in Python beats the vectorized set-up.
_BATCH_MIN = 256


class Tokenizer:
    """A byte-level BPE tokenizer: `encode(text) -> ids` and `decode(ids) -> text`.

    `vocab` maps ids to bytes, `merges` lists pairs of bytes in rank order. A merge whose halves or
    product are not in the vocabulary is ignored; a special token not in the vocabulary is appended
    with the next free id. Where two ids share the same bytes, the lower one is used. `layout` gives the
    pre-token pattern, `ignore_merges` and the BOS token a tokenizer.json post-processor adds (see `Layout`).
    """

    def __init__(
        self, vocab: Vocab, merges: Merges, special_tokens: Iterable[str] | None = None, layout: Layout = Layout()
    ) -> None:
        self.vocab: Vocab = dict(vocab)
        self.special_tokens: list[str] = check_special_tokens(special_tokens)
        self.layout = Layout(check_pattern(layout.pattern), layout.ignore_merges, layout.bos_token)
        if layout.bos_token is not None and layout.bos_token not in self.special_tokens:
            raise InputError(f"the BOS token {layout.bos_token!r} is not one of the special tokens")
        token_ids = self._index_tokens()
        # With ignore_merges, a pre-token that is a token is looked up whole, before any merging.
        self._whole_ids = token_ids if layout.ignore_merges else {}
        self.special_ids: dict[str, int] = {t: token_ids[t.encode("utf-8")] for t in self.special_tokens}
        self.merges: Merges = []
        self._ranks: dict[tuple[int, int], int] = {}  # (id, id) -> rank of the merge of that pair
        self._products: list[int] = []  # the id each merge creates, by rank
        for a, b in merges:
            pair = (token_ids.get(a), token_ids.get(b))
            product = token_ids.get(a + b)
            if None in pair or product is None or pair in self._ranks:
                continue
            self._ranks[pair] = len(self.merges)
            self._products.append(product)
            self.merges.append((a, b))
        self._byte_ids = [token_ids[bytes([b])] for b in range(256)]
        self._batch_merger = self._new_batch_merger()
        self._special_finder = SpecialTokenFinder(self.special_tokens) if self.special_tokens else None
        self.dtype = np.dtype(np.uint16 if self.vocab_size <= 1 << 16 else np.uint32)
        self._typecode = next(code for code in "HIL" if array(code).itemsize == self.dtype.itemsize)
        # Pre-token -> its packed ids. It also holds each special token's id: no pre-token equals a special
        # token, since the text is split at special tokens before it is cut into pre-tokens.
        self._special_packed = {t: self._pack([i]) for t, i in self.special_ids.items()}
        self._cache: dict[str, bytes] = dict(self._special_packed)

    def _new_batch_merger(self) -> BatchMerger | None:
        """The vectorized merger, or None when the merge list is not in creation order (it would not be exact)."""
        pairs = np.array(list(self._ranks), dtype=np.int64).reshape(-1, 2)
        products = np.array(self._products, dtype=np.int64)
        if not in_creation_order(pairs, products):
            return None
        return BatchMerger(pairs, products, np.array(self._byte_ids), self.vocab_size)

    def _index_tokens(self) -> dict[bytes, int]:
        """Map bytes to the lowest id holding them, after appending missing special tokens to the vocabulary."""
        token_ids: dict[bytes, int] = {}
        for token_id in sorted(self.vocab):
            token_ids.setdefault(self.vocab[token_id], token_id)
        for token in self.special_tokens:
            token = token.encode("utf-8")
            if token not in token_ids:
                token_ids[token] = max(self.vocab) + 1 if self.vocab else 0
                self.vocab[token_ids[token]] = token
        missing = [b for b in range(256) if bytes([b]) not in token_ids]
        if missing:
            raise InputError(
                f"the vocabulary lacks {len(missing)} of the 256 single bytes (e.g. 0x{missing[0]:02x}); "
                "a byte-level BPE vocabulary must hold every byte"
            )
        return token_ids

    @property
    def pattern(self) -> str:
        """The pre-token pattern: a preset name (gpt2, gpt4, o200k, llama3) or a regex."""
        return self.layout.pattern

    @property
    def vocab_size(self) -> int:
        """One more than the largest id: the number of rows an embedding table needs."""
        return max(self.vocab) + 1

    @classmethod
    def from_files(
        cls, vocab_path: str | os.PathLike, merges_path: str | os.PathLike, special_tokens: Iterable[str] | None = None
    ) -> Tokenizer:
        """Build a tokenizer from GPT-2's `vocab.json` and `merges.txt`."""
        vocab, merges = read_gpt2_files(vocab_path, merges_path)
        return cls(vocab, merges, special_tokens)

    @classmethod
    def load(cls, path: str | os.PathLike, merges_path: str | os.PathLike | None = None) -> Tokenizer:
        """Load a tokenizer from any of the forms a user has at hand.

        `path` is a `tokenizer.json` file, or a folder holding one or GPT-2's `vocab.json` + `merges.txt`,
        or a `.toml` descriptor of a tiktoken rank file (`lmkit.tokenizer.ranks`); or, with `merges_path`, a
        GPT-2 `vocab.json`. GPT-2 files mark no special tokens: tokens spelled
        `<|...|>` (GPT-2's `<|endoftext|>`) are taken as special, as GPT-2's own tokenizer takes them.
        """
        path = Path(path)
        if merges_path is None and path.is_dir():
            if (path / TOKENIZER_FILE).is_file():
                return cls.load(path / TOKENIZER_FILE)
            if (path / GPT2_VOCAB_FILE).is_file() and (path / GPT2_MERGES_FILE).is_file():
                return cls.load(path / GPT2_VOCAB_FILE, path / GPT2_MERGES_FILE)
            raise InputError(
                f"folder {path} holds neither {TOKENIZER_FILE} nor {GPT2_VOCAB_FILE} + {GPT2_MERGES_FILE}; "
                "give a tokenizer file or its folder"
            )
        if merges_path is None:
            if path.suffix.lower() == ".toml":
                return cls.from_rank_descriptor(path)
            if path.suffix.lower() == RANKS_SUFFIX:
                raise InputError(
                    f"{path} is a tiktoken rank file, which names no pattern or special tokens: give a .toml file "
                    f'holding ranks = "{path.name}", pattern = "gpt4" (or gpt2, o200k, llama3, a regex) and a '
                    "[special_tokens] table of token = id"
                )
            if path.name in (GPT2_VOCAB_FILE, GPT2_MERGES_FILE):
                raise InputError(
                    f"{path} is half of a GPT-2 tokenizer; give both files (--tokenizer {GPT2_VOCAB_FILE} "
                    f"--tokenizer {GPT2_MERGES_FILE}) or the folder holding them"
                )
            return cls(*load_tokenizer(path))
        vocab, merges = read_gpt2_files(path, merges_path)
        special = [token.decode() for token in vocab.values() if _GPT2_SPECIAL.fullmatch(token)]
        return cls(vocab, merges, special)

    @classmethod
    def from_ranks(cls, ranks: dict[bytes, int], pattern: str, special_tokens: dict[str, int]) -> Tokenizer:
        """A tokenizer from tiktoken's `token -> rank` table, merging by tiktoken's rule (ids are the ranks).

        tiktoken merges the adjacent pair whose concatenation has the lowest rank, and takes a pre-token
        that is itself a token whole; this gives its ids on any rank table, BPE-trained or not. `save` writes
        a merge list made from the ranks (`merges_from_ranks`), which Hugging Face `tokenizers` follows.
        """
        vocab = {rank: token for token, rank in ranks.items()}
        vocab.update({token_id: token.encode("utf-8") for token, token_id in special_tokens.items()})
        tok = cls(vocab, merges_from_ranks(ranks), list(special_tokens), Layout(pattern, ignore_merges=True))
        tok._merge_by_ranks(ranks)
        return tok

    @classmethod
    def from_rank_descriptor(cls, path: str | os.PathLike) -> Tokenizer:
        """`from_ranks` on what a TOML descriptor names (see `lmkit.tokenizer.ranks`)."""
        return cls.from_ranks(*read_descriptor(path))

    def _merge_by_ranks(self, ranks: dict[bytes, int]) -> None:
        """Rank every pair of tokens whose concatenation is a token by that token's rank (tiktoken's rule).

        The pair table then holds every split of every token into two tokens; ranks are ids here, so a
        merge of rank r makes id r. Merging all the lowest pairs of many pre-tokens at once (`BatchMerger`)
        is exact only in merge order, so each pre-token is merged on its own.
        """
        self._ranks = {}
        for token, rank in ranks.items():
            for i in range(1, len(token)):
                left, right = ranks.get(token[:i]), ranks.get(token[i:])
                if left is not None and right is not None:
                    self._ranks[(left, right)] = rank
        self._products = list(range(max(ranks.values()) + 1))
        self._batch_merger = None

    @classmethod
    def load_any(cls, paths: list[str | os.PathLike]) -> Tokenizer:
        """`load` from what a `--tokenizer` option gathered: one path, or a GPT-2 vocab.json and merges.txt
        in either order."""
        if len(paths) == 1:
            return cls.load(paths[0])
        if len(paths) != 2:
            raise InputError(
                f"give one tokenizer (tokenizer.json or its folder) or two GPT-2 files, not {len(paths)} paths"
            )
        merges, vocab = sorted(map(Path, paths), key=lambda p: p.suffix.lower() == ".json")
        if vocab.suffix.lower() != ".json" or merges.suffix.lower() == ".json":
            raise InputError(
                f"two tokenizer paths must be a GPT-2 vocab .json and a merges .txt; got {paths[0]}, {paths[1]}"
            )
        return cls.load(vocab, merges)

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as one HuggingFace-layout `tokenizer.json` file, atomically."""
        save_tokenizer(path, self.vocab, self.merges, self.special_tokens, self.layout)

    def to_json(self) -> str:
        """The tokenizer as `tokenizer.json` text (what `save` writes), e.g. to embed in a checkpoint."""
        return json.dumps(to_hf_json(self.vocab, self.merges, self.special_tokens, self.layout), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        """Rebuild a tokenizer from `to_json` text."""
        obj = parse_json(text, "the tokenizer JSON")
        return cls(*from_hf_json(obj, source="tokenizer JSON"), hf_layout(obj, "tokenizer JSON"))

    def encode(self, text: str) -> list[int]:
        """The ids of `text`; each special token becomes its one id."""
        return array(self._typecode, self._encode_packed(text)).tolist()

    def encode_prompt(self, text: str, max_tokens: int | None = None, bos: bool = True) -> list[int]:
        """The ids a model reads for `text`: the BOS token first when this tokenizer adds one (its layout's
        `bos_token`, as a tokenizer.json post-processor like Llama 3's adds it; `bos` False leaves it out), then
        the ids of `text`. With `max_tokens` the text keeps only its last tokens, so that all fit with the BOS
        still first."""
        ids = self.encode(text)
        start = [self.special_ids[self.layout.bos_token]] if bos and self.layout.bos_token is not None else []
        if max_tokens is not None:
            ids = ids[max(0, len(ids) - (max_tokens - len(start))) :]
        return start + ids

    def encode_array(self, text: str) -> np.ndarray:
        """The ids of `text` as a read-only numpy array of `self.dtype` (uint16 when every id fits, else uint32)."""
        return np.frombuffer(self._encode_packed(text), dtype=self.dtype)

    def encode_iterable(self, texts: Iterable[str], chunk_bytes: int = 1 << 16) -> Iterator[int]:
        """Yield the ids of the concatenated `texts` (e.g. the lines of an open file), with bounded memory.

        The text is buffered up to a boundary that no pre-token crosses (see `iter_chunks`), so the ids
        are exactly those of `encode` on the whole text.
        """
        for _, chunk in iter_chunks(_Utf8Stream(texts), self.special_tokens, chunk_bytes, self.pattern):
            yield from array(self._typecode, self._encode_packed(chunk.decode("utf-8")))

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`: their bytes joined and decoded as UTF-8, bad sequences replaced by U+FFFD."""
        vocab = self.vocab
        try:
            data = b"".join([vocab[i] for i in ids])
        except KeyError as err:
            raise InputError(
                f"token id {err.args[0]!r} is not in the vocabulary (ids run from 0 to {self.vocab_size - 1})"
            ) from None
        return data.decode("utf-8", errors="replace")

    def _pack(self, ids: Iterable[int]) -> bytes:
        return array(self._typecode, ids).tobytes()

    def _pretokens(self, text: str) -> list[str]:
        """The pre-tokens of `text`, with each special token as one piece of its own."""
        findall = pretoken_finder(text, self.pattern)
        if self._special_finder is None:
            return findall(text)
        pieces: list[str] = []
        for piece, is_special in self._special_finder.split(text):
            if is_special:
                pieces.append(piece)
            else:
                pieces += findall(piece)
        return pieces

    def _encode_packed(self, text: str) -> bytes:
        """The ids of `text`, packed, through the pre-token cache."""
        pieces = self._pretokens(text)
        found = list(map(self._cache.get, pieces))
        missing = _positions_of_none(found)
        if missing:
            self._fill_misses(pieces, found, missing)
        return b"".join(found)

    def _fill_misses(self, pieces: list[str], found: list[bytes | None], missing: list[int]) -> None:
        """Merge and cache the pre-tokens at the `missing` positions, and put their ids into `found`."""
        cache = self._cache
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
            cache.update(self._special_packed)
        new = list(set(map(pieces.__getitem__, missing)))
        cache.update(zip(new, self._merge_packed(new), strict=True))
        for i in missing:
            found[i] = cache[pieces[i]]

    def _merge_packed(self, pieces: list[str]) -> list[bytes]:
        """The packed ids of each pre-token, merged together when they are many (the same ids either way)."""
        if self._whole_ids:
            return self._merge_packed_whole_first(pieces)
        return self._merge_packed_by_merges(pieces)

    def _merge_packed_by_merges(self, pieces: list[str]) -> list[bytes]:
        merger = self._batch_merger if len(pieces) >= _BATCH_MIN else None
        if merger is None:
            return [self._pack(self._merge_pretoken(piece)) for piece in pieces]
        ids, lengths = merger.merge([piece.encode("utf-8") for piece in pieces])
        data = ids.astype(self.dtype).tobytes()
        ends = (np.cumsum(lengths) * self.dtype.itemsize).tolist()
        return list(map(data.__getitem__, map(slice, [0, *ends[:-1]], ends)))

    def _merge_packed_whole_first(self, pieces: list[str]) -> list[bytes]:
        """`_merge_packed` for `ignore_merges`: a pre-token in the vocabulary is its one id."""
        whole = [self._whole_ids.get(piece.encode("utf-8")) for piece in pieces]
        rest = [piece for piece, token_id in zip(pieces, whole, strict=True) if token_id is None]
        merged = iter(self._merge_packed_by_merges(rest) if rest else [])
        return [next(merged) if token_id is None else self._pack([token_id]) for token_id in whole]

    def _merge_pretoken(self, piece: str) -> list[int]:
        """BPE on one pre-token: merge the leftmost adjacent pair of lowest rank until no pair has a rank.

        `ranks[i]` is the rank of the pair `(ids[i], ids[i + 1])`, and a final `_NO_MERGE` stands for the
        end; a merge changes only the pairs on either side of the new token.
        """
        ids = [self._byte_ids[b] for b in piece.encode("utf-8")]
        rank_of, products = self._ranks.get, self._products
        ranks = list(map(rank_of, zip(ids, ids[1:], strict=False), repeat(_NO_MERGE)))
        ranks.append(_NO_MERGE)
        while (best := min(ranks)) != _NO_MERGE:
            i = ranks.index(best)
            new = ids[i] = products[best]
            del ids[i + 1], ranks[i]
            if i + 1 < len(ids):
                ranks[i] = rank_of((new, ids[i + 1]), _NO_MERGE)
            if i > 0:
                ranks[i - 1] = rank_of((ids[i - 1], new), _NO_MERGE)
        return ids


def _positions_of_none(items: list) -> list[int]:
    """Where `items` holds None, found by `list.index` (a scan in C: in a warm cache most items are not None)."""
    positions, i = [], -1
    try:
        while True:
            i = items.index(None, i + 1)
            positions.append(i)
    except ValueError:
        return positions


class _Utf8Stream:
    """An iterable of strings read as a binary stream of their UTF-8 bytes (what `iter_chunks` reads)."""

    def __init__(self, texts: Iterable[str]) -> None:
        self._texts = iter(texts)
        self._pending = bytearray()

    def read(self, size: int) -> bytes:
        """Up to `size` bytes; fewer only at the end of the texts."""
        while len(self._pending) < size:
            text = next(self._texts, None)
            if text is None:
                break
            self._pending += text.encode("utf-8")
        data = bytes(self._pending[:size])
        del self._pending[:size]
        return data
