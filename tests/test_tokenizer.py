"""Tokenizer: exact GPT-2 parity with tiktoken, round trips, special tokens, streaming, files and bad input."""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path

import pytest
import tokenizers
from gpt2_reference import EOT, tiktoken_ids
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.errors import InputError
from lmkit.tokenizer import Tokenizer, train_bpe
from lmkit.tokenizer.fast_pretokenize import split_pretokens
from lmkit.tokenizer.pretokenize import PRETOKEN_RE

FILES = ["address.txt", "german.txt", "tinystories_sample.txt", "corpus.en"]
TEXTS = [
    "",
    "a",
    " ",
    "\n",
    "!",
    "é",
    "中",
    "😀",
    "Hello, world! It's 2024; we'll see   you\t\tthere.\n\n",
    "emoji: 👋🏽 🌍 👨‍👩‍👧 ✨ and flags 🇩🇪",
    "CJK: 你好，世界。こんにちは、世界。안녕하세요",
    "combining: e\u0301 n\u0303 a\u0308 Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇",
    "numbers 3.14159 1,000,000 ²³ Ⅻ ١٢٣",
    "  leading and trailing spaces   \n  \n",
    f"first document{EOT}second document",
    f"{EOT}{EOT} back to back {EOT}",
    f"no space before{EOT}\n\nand newlines after",
    "a special token with a space: one<|doc sep|>two",
]
SEP = "<|doc sep|>"


@pytest.fixture(scope="module")
def gpt2(fixtures_dir: Path) -> Tokenizer:
    return Tokenizer.from_files(fixtures_dir / "gpt2_vocab.json", fixtures_dir / "gpt2_merges.txt", [EOT])


@pytest.fixture(scope="module")
def fixtures_dir() -> Path:
    return Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, fixtures_dir: Path) -> Tokenizer:
    """A tokenizer trained by lmkit on corpus.en plus documents with emoji and CJK."""
    corpus = tmp_path_factory.mktemp("trained") / "corpus.txt"
    extra = EOT.join(TEXTS[8:14])
    corpus.write_text((fixtures_dir / "corpus.en").read_text(encoding="utf-8") + EOT + extra, encoding="utf-8")
    vocab, merges = train_bpe(corpus, 700, [EOT, SEP], num_workers=1)
    return Tokenizer(vocab, merges, [EOT, SEP])


def all_texts(fixtures_dir: Path) -> list[str]:
    return TEXTS + [(fixtures_dir / name).read_text(encoding="utf-8") for name in FILES]


def test_gpt2_ids_equal_tiktoken(gpt2: Tokenizer, fixtures_dir: Path) -> None:
    for text in all_texts(fixtures_dir):
        assert gpt2.encode(text) == tiktoken_ids(text), text[:60]


def test_known_gpt2_ids(gpt2: Tokenizer) -> None:
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(f"a{EOT}b") == [64, 50256, 65]
    assert gpt2.decode([15496, 995]) == "Hello world"


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_gpt2_ids_equal_tiktoken_on_any_text(gpt2: Tokenizer, text: str) -> None:
    assert gpt2.encode(text) == tiktoken_ids(text)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_roundtrip_any_text(gpt2: Tokenizer, text: str) -> None:
    assert gpt2.decode(gpt2.encode(text)) == text


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8")))
def test_fast_pretokens_equal_the_gpt2_regex(text: str) -> None:
    assert split_pretokens(text) == PRETOKEN_RE.findall(text)


def test_fast_pretokens_on_every_character() -> None:
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    rng = random.Random(0)
    for sample in ([c for c in chars if ord(c) < 0x10000], chars):
        rng.shuffle(sample)
        text = "".join(c + rng.choice(["", " ", "a", "1", "  ", "\n", "'s"]) for c in sample)
        assert split_pretokens(text) == PRETOKEN_RE.findall(text)


def test_roundtrip_test_texts(gpt2: Tokenizer, trained: Tokenizer, fixtures_dir: Path) -> None:
    for text in all_texts(fixtures_dir):
        assert gpt2.decode(gpt2.encode(text)) == text
        assert trained.decode(trained.encode(text)) == text


def test_decode_replaces_invalid_utf8(gpt2: Tokenizer) -> None:
    smile = gpt2.encode("😀")
    assert len(smile) > 1  # split inside the character
    assert gpt2.decode(smile[:1]) == "\ufffd"
    assert gpt2.decode(smile[:1] + smile) == "\ufffd😀"
    assert gpt2.decode(smile) == "😀"


@pytest.mark.parametrize("bad", [50257, -1, 10**9])
def test_decode_rejects_ids_out_of_range(gpt2: Tokenizer, bad: int) -> None:
    with pytest.raises(InputError, match=rf"token id {bad} is not in the vocabulary \(ids run from 0 to 50256\)"):
        gpt2.decode([15496, bad])


def test_overlapping_special_tokens_longest_wins(fixtures_dir: Path) -> None:
    double = EOT + EOT
    tok = Tokenizer.from_files(fixtures_dir / "gpt2_vocab.json", fixtures_dir / "gpt2_merges.txt", [EOT, double])
    assert tok.special_ids == {EOT: 50256, double: 50257}  # the double is new: it gets the next free id
    hello = tiktoken_ids("Hello")
    assert tok.encode(f"Hello{double}Hello") == hello + [50257] + hello
    assert tok.encode(EOT * 3) == [50257, 50256]
    assert tok.decode([50257, 50256]) == EOT * 3


def test_special_tokens_are_never_merged_across(trained: Tokenizer) -> None:
    eot = trained.special_ids[EOT]
    assert eot == 0  # trained ids: special tokens first
    ids = trained.encode(f" the{EOT} the")
    assert ids.count(eot) == 1
    before, after = ids[: ids.index(eot)], ids[ids.index(eot) + 1 :]
    assert before == after == trained.encode(" the")


def _reference_bpe(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], text: str) -> list[int]:
    """Plain BPE: pre-tokenize with the GPT-2 regex, then apply every merge in order of creation."""
    ids_of = {token: token_id for token_id, token in sorted(vocab.items(), reverse=True)}
    merged: dict[str, list[bytes]] = {}
    for piece in set(PRETOKEN_RE.findall(text)):
        parts = [bytes([b]) for b in piece.encode("utf-8")]
        for a, b in merges:
            i = 0
            while i < len(parts) - 1:
                if parts[i] == a and parts[i + 1] == b:
                    parts[i : i + 2] = [a + b]
                else:
                    i += 1
        merged[piece] = parts
    return [ids_of[p] for piece in PRETOKEN_RE.findall(text) for p in merged[piece]]


def test_trained_tokenizer_applies_merges_in_order(trained: Tokenizer, fixtures_dir: Path) -> None:
    for text in all_texts(fixtures_dir):
        for piece in text.replace(SEP, EOT).split(EOT):
            assert trained.encode(piece) == _reference_bpe(trained.vocab, trained.merges, piece)


def test_saved_tokenizer_loads_identically(trained: Tokenizer, gpt2: Tokenizer, tmp_path: Path, fixtures_dir: Path):
    for name, tok in [("trained", trained), ("gpt2", gpt2)]:
        tok.save(tmp_path / f"{name}.json")
        loaded = Tokenizer.load(tmp_path / f"{name}.json")
        from_text = Tokenizer.from_json(tok.to_json())
        assert loaded.vocab == from_text.vocab == tok.vocab
        assert loaded.merges == from_text.merges == tok.merges
        assert loaded.special_tokens == tok.special_tokens
        for text in all_texts(fixtures_dir):
            assert loaded.encode(text) == from_text.encode(text) == tok.encode(text)


def test_huggingface_tokenizers_reads_lmkit_files(trained: Tokenizer, gpt2: Tokenizer, tmp_path: Path, fixtures_dir):
    for name, tok in [("trained", trained), ("gpt2", gpt2)]:
        tok.save(tmp_path / f"{name}.json")
        hf = tokenizers.Tokenizer.from_file(str(tmp_path / f"{name}.json"))
        for text in all_texts(fixtures_dir):
            assert hf.encode(text).ids == tok.encode(text), (name, text[:60])


def test_load_accepts_the_folder_holding_tokenizer_json(trained: Tokenizer, tmp_path: Path) -> None:
    trained.save(tmp_path / "tokenizer.json")
    assert Tokenizer.load(tmp_path).encode("the cat") == trained.encode("the cat")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds neither tokenizer.json nor vocab.json"):
        Tokenizer.load(tmp_path / "empty")


def test_bad_tokenizer_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        Tokenizer.load(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text('{"model": {', encoding="utf-8")
    with pytest.raises(InputError, match="is not valid JSON"):
        Tokenizer.load(tmp_path / "broken.json")
    with pytest.raises(InputError, match="is not valid"):
        Tokenizer.from_json("not json")


def _byte_vocab() -> dict[int, bytes]:
    return {b: bytes([b]) for b in range(256)}


def test_merges_outside_the_vocabulary_are_ignored() -> None:
    vocab = {**_byte_vocab(), 256: b"ab", 257: b"abc"}
    merges = [(b"#version:", b"0.2"), (b"a", b"b"), (b"x", b"y"), (b"ab", b"c")]
    tok = Tokenizer(vocab, merges)
    assert tok.merges == [(b"a", b"b"), (b"ab", b"c")]
    assert tok.encode("abcxy ab") == [257, ord("x"), ord("y"), ord(" "), 256]


def test_special_tokens_missing_from_the_vocabulary_are_appended() -> None:
    vocab = {**_byte_vocab(), 300: b"<|sep|>"}
    tok = Tokenizer(vocab, [], ["<|sep|>", "<|new|>"])
    assert tok.special_ids == {"<|sep|>": 300, "<|new|>": 301}
    assert tok.encode("a<|new|>b<|sep|>") == [ord("a"), 301, ord("b"), 300]


def test_vocabulary_without_every_byte_is_rejected() -> None:
    vocab = {b: bytes([b]) for b in range(255)}
    with pytest.raises(InputError, match="lacks 1 of the 256 single bytes"):
        Tokenizer(vocab, [])


def test_encode_iterable_equals_encode(gpt2: Tokenizer, fixtures_dir: Path, tmp_path: Path) -> None:
    text = EOT.join((fixtures_dir / name).read_text(encoding="utf-8") for name in FILES) + "\n  tail  \n\n"
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    with open(path, encoding="utf-8") as handle:
        streamed = list(gpt2.encode_iterable(handle, chunk_bytes=512))
    assert streamed == tiktoken_ids(text)
    assert list(gpt2.encode_iterable(["ab  ", "  cd", "\n\n", "e"])) == tiktoken_ids("ab    cd\n\ne")


def _peak_memory_of_streaming(tok: Tokenizer, path: Path) -> tuple[int, int]:
    """(peak bytes allocated while streaming `path` through encode_iterable in 4 KB chunks, number of ids)."""
    tracemalloc.start()
    with open(path, encoding="utf-8") as handle:
        count = sum(1 for _ in tok.encode_iterable(handle, chunk_bytes=4096))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, count


def test_encode_iterable_memory_stays_flat(gpt2: Tokenizer, tmp_path: Path) -> None:
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "slept", "Once", "upon", "time"]

    def write(path: Path, lines: int) -> Path:
        with open(path, "w", encoding="utf-8") as handle:
            for i in range(lines):
                handle.write(" ".join(rng.choice(words) for _ in range(12)) + (f".{EOT}" if i % 50 == 49 else ".\n"))
        return path

    gpt2.encode("warm the cache: " + " ".join(words))
    small_peak, small_count = _peak_memory_of_streaming(gpt2, write(tmp_path / "small.txt", 4_000))
    large_peak, large_count = _peak_memory_of_streaming(gpt2, write(tmp_path / "large.txt", 16_000))
    assert large_count > 3.5 * small_count
    assert large_peak < 1.3 * small_peak + 100_000
    assert large_peak < (tmp_path / "large.txt").stat().st_size  # less than the text itself


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="ab<>|", max_size=40),
    tokens=st.lists(st.text(alphabet="ab<>|", min_size=1, max_size=5), min_size=1, max_size=4),
)
def test_special_tokens_are_found_as_a_longest_first_alternation_finds_them(text: str, tokens: list[str]) -> None:
    import regex

    from lmkit.tokenizer.pretokenize import SpecialTokenFinder

    alternation = regex.compile("|".join(regex.escape(t) for t in sorted(set(tokens), key=len, reverse=True)))
    expected = [match.span() for match in alternation.finditer(text)]
    assert list(SpecialTokenFinder(tokens).spans(text)) == expected
    assert list(SpecialTokenFinder(tokens, as_bytes=True).spans(text.encode())) == expected


def test_a_long_special_token_over_text_that_almost_matches_it(tmp_path: Path) -> None:
    # 'a' * 9,999 runs almost match the 10,000-byte token at every position: a regex scan is quadratic there.
    token = "a" * 10_000
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(("hello " + "a" * 9_999 + " world\n") * 50 + token + "\nend\n")
    tokenizer = Tokenizer(*train_bpe(corpus, 300, [token]), [token])
    ids = tokenizer.encode("x " + "a" * 9_999 + token + " y")
    assert ids.count(tokenizer.special_ids[token]) == 1
    assert tokenizer.decode(ids) == "x " + "a" * 9_999 + token + " y"
