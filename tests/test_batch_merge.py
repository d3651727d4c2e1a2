"""Vectorized BPE (batch_merge.py): the same ids as merging one pre-token at a time, and when it must not be used."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from gpt2_reference import EOT, tiktoken_ids
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.tokenizer import Tokenizer
from lmkit.tokenizer.batch_merge import NO_MERGE, PairRanks, in_creation_order
from lmkit.tokenizer.pretokenize import PRETOKEN_RE

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return Tokenizer.from_files(FIXTURES / "gpt2_vocab.json", FIXTURES / "gpt2_merges.txt", [EOT])


def _byte_vocab() -> dict[int, bytes]:
    return {b: bytes([b]) for b in range(256)}


# Merges in creation order whose pairs overlap in runs: "aaaa" is (aa, aa), "aaa" is (aa, a).
RUNS = Tokenizer(
    {**_byte_vocab(), 256: b"aa", 257: b"aaaa", 258: b"aaa", 259: b"ab", 260: b"aab", 261: b"ba"},
    [(b"a", b"a"), (b"aa", b"aa"), (b"aa", b"a"), (b"a", b"b"), (b"a", b"ab"), (b"b", b"a")],
)


def _one_by_one(tok: Tokenizer, words: list[str]) -> tuple[list[int], list[int]]:
    merged = [tok._merge_pretoken(word) for word in words]
    return [i for ids in merged for i in ids], [len(ids) for ids in merged]


def _batch(tok: Tokenizer, words: list[str]) -> tuple[list[int], list[int]]:
    ids, lengths = tok._batch_merger.merge([word.encode("utf-8") for word in words])
    return ids.tolist(), lengths.tolist()


def test_batch_equals_one_by_one_on_the_words_of_the_test_texts(gpt2: Tokenizer) -> None:
    text = "".join((FIXTURES / name).read_text(encoding="utf-8") for name in ["corpus.en", "german.txt", "address.txt"])
    words = sorted(set(PRETOKEN_RE.findall(text)))
    assert len(words) > 1000
    assert _batch(gpt2, words) == _one_by_one(gpt2, words)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="ab", min_size=1, max_size=40), min_size=1, max_size=30))
def test_batch_equals_one_by_one_on_runs_of_the_same_pair(words: list[str]) -> None:
    assert _batch(RUNS, words) == _one_by_one(RUNS, words)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=50))
def test_batch_equals_one_by_one_on_any_unicode(gpt2: Tokenizer, words: list[str]) -> None:
    assert _batch(gpt2, words) == _one_by_one(gpt2, words)


def test_runs_merge_from_the_left() -> None:
    # "aaaaa": (a, a) at 0 and 2 (not 1), then (aa, aa), leaving the last "a".
    assert _batch(RUNS, ["aaaaa", "aaa", "a"]) == ([257, ord("a"), 258, ord("a")], [2, 1, 1])


def test_many_new_pretokens_in_one_text_encode_like_tiktoken() -> None:
    # A fresh tokenizer meets thousands of new pre-tokens at once, which go through the batch merger.
    tok = Tokenizer.from_files(FIXTURES / "gpt2_vocab.json", FIXTURES / "gpt2_merges.txt", [EOT])
    text = EOT.join((FIXTURES / name).read_text(encoding="utf-8") for name in ["corpus.en", "tinystories_sample.txt"])
    assert len(set(PRETOKEN_RE.findall(text))) > 2000
    assert tok.encode(text) == tiktoken_ids(text)


def test_a_merge_list_out_of_creation_order_is_merged_one_by_one() -> None:
    # (ab, a) is listed before the merge that creates "ab": merging all (a, b) at once would give [ab, ab]
    # for "abab", while lowest-rank-first gives [aba, b].
    vocab = {**_byte_vocab(), 256: b"ab", 257: b"aba"}
    tok = Tokenizer(vocab, [(b"ab", b"a"), (b"a", b"b")])
    assert tok._batch_merger is None
    filler = " ".join(f"w{i}x" for i in range(400))  # enough new pre-tokens for a batch
    assert tok.encode(filler + " abab")[-3:] == [ord(" "), 257, ord("b")]


def test_in_creation_order() -> None:
    pairs = np.array([[97, 98], [256, 97]])  # (a, b) -> 256, then (256, a) -> 257
    assert in_creation_order(pairs, np.array([256, 257]))
    assert not in_creation_order(pairs[::-1], np.array([257, 256]))
    # Token 11 is created by merge 1, used by merge 2, and created again by merge 3: a later creation counts.
    assert not in_creation_order(np.array([[1, 2], [10, 3], [11, 4], [1, 12]]), np.array([10, 11, 13, 11]))
    assert in_creation_order(np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64))


def test_pair_ranks_agree_with_a_dict_under_collisions() -> None:
    rng = random.Random(0)
    table = {}
    while len(table) < 5000:
        table.setdefault((rng.randrange(300), rng.randrange(300)), len(table))
    pairs = np.array(list(table), dtype=np.int64)
    ranks = PairRanks(pairs, np.array(list(table.values())), vocab_size=300)
    queries = np.array([(rng.randrange(300), rng.randrange(300)) for _ in range(20_000)], dtype=np.int64)
    expected = [table.get((a, b), NO_MERGE) for a, b in queries.tolist()]
    assert ranks.lookup(queries[:, 0], queries[:, 1]).tolist() == expected
    assert ranks.lookup(pairs[:, 0], pairs[:, 1]).tolist() == list(table.values())
