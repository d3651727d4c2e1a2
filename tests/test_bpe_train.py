"""BPE training: hand-worked merges, an independent slow reference, chunking/worker invariance, the CLI."""

import json
import random
import re
from collections import Counter
from functools import cache
from itertools import pairwise
from pathlib import Path

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmkit.cli.app import app
from lmkit.cli.common import err_console
from lmkit.errors import InputError
from lmkit.tokenizer import counting, train_bpe
from lmkit.tokenizer import train as bpe_train_module
from lmkit.tokenizer.counting import count_pretokens
from lmkit.tokenizer.formats import load_tokenizer
from lmkit.tokenizer.train import _reversed_spelling, display_token, learn_merges

FIXTURES = Path(__file__).parent / "fixtures"
EOT = "<|endoftext|>"

# ---------------------------------------------------------------------------------------------------------
# The reference: words as tuples of bytes, every pair recounted from scratch before every merge.

GPT2_SPLIT = regex.compile(r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def reference_words(text: str, specials: list[str]) -> Counter:
    pieces = [text]
    if specials:
        pieces = re.split("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)), text)
    words = Counter()
    for piece in pieces:
        for pretoken in GPT2_SPLIT.findall(piece):
            words[tuple(bytes([b]) for b in pretoken.encode("utf-8"))] += 1
    return words


def reference_merges(words: Counter, num_merges: int) -> list[tuple[bytes, bytes]]:
    merges = []
    while len(merges) < num_merges:
        pairs = Counter()
        for word, count in words.items():
            for pair in pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        merged = Counter()
        for word, count in words.items():
            if best[0] in word and best[1] in word:
                out, i = [], 0
                while i < len(word):
                    if word[i : i + 2] == best:
                        out.append(best[0] + best[1])
                        i += 2
                    else:
                        out.append(word[i])
                        i += 1
                word = tuple(out)
            merged[word] += count
        words = merged
    return merges


@cache
def reference_for_fixture(name: str, num_merges: int) -> list[tuple[bytes, bytes]]:
    text = (FIXTURES / name).read_bytes().decode("utf-8")
    return reference_merges(reference_words(text, [EOT]), num_merges)


# ---------------------------------------------------------------------------------------------------------
# Hand-worked examples.


def test_a_run_of_one_byte_merges_left_to_right():
    # "aaaa": (a,a) occurs 3 times (overlapping); merging left to right gives [aa, aa], then [aaaa].
    assert learn_merges({b"aaaa": 1}, 10) == [(b"a", b"a"), (b"aa", b"aa")]
    # "aaa" -> [aa, a] -> [aaa]
    assert learn_merges({b"aaa": 1}, 10) == [(b"a", b"a"), (b"aa", b"a")]
    # "aaaaa" -> [aa, aa, a]: (aa,aa) and (aa,a) tie at 1, and b"aa" > b"a" -> [aaaa, a] -> [aaaaa]
    assert learn_merges({b"aaaaa": 1}, 10) == [(b"a", b"a"), (b"aa", b"aa"), (b"aaaa", b"a")]


def test_ties_go_to_the_lexicographically_greatest_pair():
    # At equal counts the lexicographically greater pair wins: (o, w) beats (l, o).
    assert learn_merges({b"low": 1}, 10) == [(b"o", b"w"), (b"l", b"ow")]
    # (c,d), (a,b), (' ',c) all occur once: (c,d) first, then (a,b) beats (' ', cd) since b"a" > b" ".
    assert learn_merges({b"ab": 1, b" cd": 1}, 10) == [(b"c", b"d"), (b"a", b"b"), (b" ", b"cd")]


def test_ties_compare_prefixes_on_both_halves(tmp_path):
    # Pre-tokens "bc", " bc", " abc", " ab". (b,c)=3 first; then (' ',a)=2. Then (' a',bc), (' a',b) and
    # (' ',bc) tie at 1: b" a" > b" " (a prefix is smaller), and b"bc" > b"b".
    corpus = tmp_path / "ties.txt"
    corpus.write_text("bc bc abc ab")
    vocab, merges = train_bpe(corpus, 300, [])
    assert merges == [(b"b", b"c"), (b" ", b"a"), (b" a", b"bc"), (b" a", b"b"), (b" ", b"bc")]
    assert len(vocab) == 256 + 5  # stopped early: no pair left


def test_counts_carry_the_multiplicity_of_each_pretoken():
    # (b,a): 3 in "abab" + 7 in "ba" = 10 beats (a,b): 2 * 3 = 6. Then "abab" is [a, ba, b]: (a,ba) and
    # (ba,b) tie at 3 and b"ba" > b"a"; then (a, bab).
    assert learn_merges({b"abab": 3, b"ba": 7}, 10) == [(b"b", b"a"), (b"ba", b"b"), (b"a", b"bab")]


def test_nothing_is_merged_across_a_special_token(tmp_path):
    corpus = tmp_path / "specials.txt"
    corpus.write_text(f"ab{EOT}ab{EOT}{EOT}x{EOT}")
    vocab, merges = train_bpe(corpus, 1000, [EOT])
    # Only "ab" has a pair; without the split (b,'<'), ('<','|') ... would be merged too.
    assert merges == [(b"a", b"b")]
    assert vocab == {0: EOT.encode(), **{1 + b: bytes([b]) for b in range(256)}, 257: b"ab"}


def test_ids_are_specials_then_bytes_then_merges(tmp_path):
    corpus = tmp_path / "ids.txt"
    corpus.write_text("low low lower")
    vocab, merges = train_bpe(corpus, 2 + 256 + 3, ["<b>", "<a>"])
    assert vocab[0] == b"<b>" and vocab[1] == b"<a>"
    assert [vocab[2 + b] for b in range(256)] == [bytes([b]) for b in range(256)]
    assert [vocab[258 + k] for k in range(3)] == [a + b for a, b in merges]
    # "low", " low", " lower": (o,w)=3 beats (l,o)=3 on the tie; then (l,ow)=3; then (' ',low)=2.
    assert merges == [(b"o", b"w"), (b"l", b"ow"), (b" ", b"low")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=4), st.binary(max_size=4)), min_size=2, max_size=6))
def test_heap_tie_keys_order_pairs_greatest_first(pairs):
    # The heap pops the smallest key: it must be the greatest (bytes_a, bytes_b), prefixes included.
    by_key = sorted(pairs, key=lambda pair: _reversed_spelling(pair[0]) + _reversed_spelling(pair[1]))
    assert by_key == sorted(pairs, reverse=True)


# ---------------------------------------------------------------------------------------------------------
# The fast trainer against the reference.


@pytest.mark.parametrize("name", ["corpus.en", "tinystories_sample.txt"])
@pytest.mark.parametrize("vocab_size", [500, 1000])
def test_fixtures_match_the_reference(name, vocab_size):
    num_merges = vocab_size - 257
    vocab, merges = train_bpe(FIXTURES / name, vocab_size, [EOT])
    # The reference's first merges for a smaller vocabulary are the prefix of its merges for a larger one.
    assert merges == reference_for_fixture(name, 1000 - 257)[:num_merges]
    assert len(vocab) == 257 + len(merges)


@settings(max_examples=200, deadline=None)
@given(
    words=st.dictionaries(st.text(alphabet="abc", min_size=1, max_size=30), st.integers(1, 3), min_size=1, max_size=8),
    num_merges=st.integers(1, 40),
)
def test_long_word_index_merges_like_the_reference(words, num_merges):
    # Every word of 2+ bytes through the position index of long words, then words of 8+ bytes (a mix of the
    # two paths, sharing pairs): the same merges as the reference.
    counts = {w.encode(): c for w, c in words.items()}
    reference = reference_merges(Counter({tuple(bytes([b]) for b in w): c for w, c in counts.items()}), num_merges)
    for long_word in (2, 8):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(bpe_train_module, "LONG_WORD", long_word)
            assert learn_merges(counts, num_merges) == reference


def test_a_long_word_beside_short_ones_merges_like_the_reference():
    rng = random.Random(3)
    long_word = "".join(rng.choices("abcd", k=3 * bpe_train_module.LONG_WORD)).encode()
    counts = {long_word: 2, b"abab": 5, b"dcba": 7, b"aa": 1}
    reference = reference_merges(Counter({tuple(bytes([b]) for b in w): c for w, c in counts.items()}), 60)
    assert learn_merges(counts, 60) == reference


PIECES = st.one_of(
    st.text(max_size=12),
    st.text(alphabet="ab \n", max_size=12),
    st.sampled_from([EOT, "<s>", "<s><s>", " ", "aaaa", "é", "你好", "don't", "\r\n"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(PIECES, min_size=1, max_size=30), extra=st.integers(0, 40))
def test_generated_texts_match_the_reference(tmp_path, pieces, extra):
    text = "".join(pieces)
    corpus = tmp_path / "generated.txt"
    corpus.write_bytes(text.encode("utf-8"))
    specials = [EOT, "<s>", "<s><s>"]
    if not text:
        return
    vocab, merges = train_bpe(corpus, 256 + len(specials) + extra, specials)
    assert merges == reference_merges(reference_words(text, specials), extra)
    products = [a + b for a, b in merges]
    assert len(set(products)) == len(products)  # two merges never make the same bytes (see train.py)


# ---------------------------------------------------------------------------------------------------------
# Chunking and workers change nothing.


def _tricky_corpus(path: Path) -> Path:
    parts = [
        (FIXTURES / "tinystories_sample.txt").read_text(),
        "a\r\nb  \n\n  c\té\nx" * 20,
        f"{EOT}{EOT}<s><s><s>" * 3,
        "no newline here at all " * 200,
        (FIXTURES / "german.txt").read_text(),
        (FIXTURES / "corpus.en").read_text()[:20000],
    ]
    path.write_bytes("\n".join(parts).encode("utf-8"))
    return path


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("chunk_bytes", [16, 333, 4096, 1 << 20])
def test_counts_do_not_depend_on_chunk_size_or_workers(tmp_path, workers, chunk_bytes):
    corpus = _tricky_corpus(tmp_path / "tricky.txt")
    specials = [EOT, "<s>", "<s><s>"]
    counted = count_pretokens(corpus, specials, num_workers=workers, chunk_bytes=chunk_bytes, parallel_min_bytes=0)
    text = corpus.read_bytes().decode("utf-8")
    expected = reference_words(text, specials)
    assert counted.counts == Counter({b"".join(w).decode("utf-8"): c for w, c in expected.items()})
    assert counted.corpus_bytes == len(text.encode("utf-8"))
    # Documents: text stretches between special tokens ("<s><s>" counts once where it wins).
    assert counted.documents == len(regex.findall(r"<\|endoftext\|>|<s><s>|<s>", text)) + 1


def test_same_merges_with_one_worker_and_two(tmp_path, monkeypatch):
    monkeypatch.setattr(counting, "PARALLEL_MIN_BYTES", 0)  # a pool even for this small file
    monkeypatch.setattr(counting, "CHUNK_BYTES", 4096)
    corpus = _tricky_corpus(tmp_path / "tricky.txt")
    one = train_bpe(corpus, 600, [EOT], num_workers=1)
    two = train_bpe(corpus, 600, [EOT], num_workers=2)
    assert one == two


def test_invalid_utf8_in_a_worker_names_the_byte(tmp_path):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(b"fine text\n" * 1000 + b"caf\xe9\n" + b"more\n" * 1000)
    with pytest.raises(InputError, match="at byte 10,003"):
        count_pretokens(corpus, [], num_workers=2, chunk_bytes=512, parallel_min_bytes=0)


# ---------------------------------------------------------------------------------------------------------
# The command line.


def test_cli_trains_and_writes_a_loadable_tokenizer(runner, tmp_path):
    out = tmp_path / "tok.json"
    corpus = FIXTURES / "tinystories_sample.txt"
    args = ["tokenizer", "train", str(corpus), "--vocab-size", "300", "--special-token", EOT]
    result = runner.invoke(app, [*args, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    facts = json.loads(result.stdout)
    vocab, merges = train_bpe(corpus, 300, [EOT])
    assert facts["vocab size"] == 300 and facts["merges"] == 43 == len(merges)
    assert facts["corpus bytes"] == corpus.stat().st_size
    assert facts["documents"] == corpus.read_text().count(EOT) + 1
    assert facts["longest tokens"][0] == " friend"
    assert load_tokenizer(out)[:3] == (vocab, merges, [EOT])
    assert "Merging" in result.stderr


def test_cli_table_escapes_unprintable_tokens(runner, tmp_path):
    corpus = tmp_path / "lines.txt"
    corpus.write_text("x\n\n\n\ny\n\n\n\nz\n\n\n\n")
    result = runner.invoke(
        app, ["tokenizer", "train", str(corpus), "--vocab-size", "258", "--out", str(tmp_path / "t.json")]
    )
    assert result.exit_code == 0
    assert "'\\n\\n\\n'" in result.stdout  # the pattern keeps the last \n for the next word


def test_tokens_are_displayed_escaped_where_not_printable():
    assert display_token(" café".encode()) == " café"
    assert display_token(b"\n\t") == "\\n\\t"
    assert display_token("€".encode()[:2]) == "\\xe2\\x82"  # half a character


def _bad_input(runner, tmp_path, corpus, *options):
    out = tmp_path / "out" / "tok.json" if "--out" not in options else None
    if out is not None:
        out.parent.mkdir(exist_ok=True)
        options = (*options, "--out", str(out))
    before = sorted(tmp_path.rglob("*"))
    result = runner.invoke(app, ["tokenizer", "train", str(corpus), *options])
    assert result.exit_code == 2
    # One line of error (a corpus found bad while it is read also leaves the progress bar where it stopped).
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("Pre-tokenizing")]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, no temporary file left
    return result.stderr


def test_bad_inputs_exit_2_with_one_line(runner, tmp_path, monkeypatch):
    # The CLI's console wraps at 80 columns when it is not a terminal; these messages hold long paths.
    monkeypatch.setattr(err_console, "soft_wrap", True)
    good = tmp_path / "good.txt"
    good.write_text("hello world")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"hello caf\xe9 world")
    assert "does not exist" in _bad_input(runner, tmp_path, tmp_path / "missing.txt", "--vocab-size", "300")
    no_corpus_files = tmp_path / "notes"
    no_corpus_files.mkdir()
    (no_corpus_files / "readme.md").write_text("not a corpus file")
    assert "holds no corpus files" in _bad_input(runner, tmp_path, no_corpus_files, "--vocab-size", "300")
    assert "is empty" in _bad_input(runner, tmp_path, empty, "--vocab-size", "300")
    assert "not UTF-8" in (msg := _bad_input(runner, tmp_path, latin1, "--vocab-size", "300")) and "byte 9" in msg
    msg = _bad_input(runner, tmp_path, good, "--vocab-size", "256", "--special-token", EOT)
    assert "at least 257" in msg
    assert "special token is empty" in _bad_input(runner, tmp_path, good, "--vocab-size", "300", "--special-token", "")
    msg = _bad_input(runner, tmp_path, good, "--vocab-size", "300", "--out", str(tmp_path / "nowhere" / "t.json"))
    assert "does not exist" in msg and "nowhere" in msg
    assert "workers" in _bad_input(runner, tmp_path, good, "--vocab-size", "300", "--workers", "0")
