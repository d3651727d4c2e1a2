"""Pre-token patterns (gpt2, gpt4, o200k, llama3, a regex): exact against tiktoken and Hugging Face tokenizers.

The references are built here from vocabularies trained on the test fixtures: tiktoken `Encoding`s from
their ranks, `tokenizers.Tokenizer`s from the tokenizer.json lmkit writes. Nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import random
from functools import cache
from pathlib import Path

import pytest
import regex
import tiktoken
import tiktoken_ext.openai_public as openai_public
import tokenizers
from helpers import assert_input_error
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.cli.app import app
from lmkit.tokenizer import Tokenizer
from lmkit.tokenizer.fast_pretokenize import split_pretokens
from lmkit.tokenizer.formats import Layout
from lmkit.tokenizer.pretokenize import iter_chunks, pattern_findall
from lmkit.tokenizer.train import train_bpe

FIXTURES = Path(__file__).parent / "fixtures"
EOT = "<|endoftext|>"
PRESETS = ["gpt2", "gpt4", "o200k", "llama3"]
# Llama 3's pattern as its published tokenizer.json (and transformers' tiktoken converter) spells it.
LLAMA3_HF = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)
PIECES = [
    "In 2024, the 12345 cats DON'T sleep.\r\nHello  world\n",
    "1234567",
    "3.14159",
    "IT'S",
    "we'LL",
    "I'M",
    "they've",
    "\r\n",
    "\r\n\r\n",
    "   ",
    "\t\t",
    " \n ",
    "😀",
    "👨‍👩‍👧",
    "你好，世界",
    "e\u0301",
    "Z̤͔ͧ̑̓",
    "١٢٣",
    "²³",
    "a/b//c",
    "!!\n",
    "x",
    "Hello",
    " world",
    "ÉCOLE",
    "camelCaseWord",
    "Tom'ſ",
    "X'K",
    "\x1c\x85\u2028\xa0",
    "'İLL",
]
# Unassigned code points are left out: regex engines built on different Unicode versions class them apart.
CHARS = st.characters(exclude_categories=("Cs", "Cn"))
TEXTS = st.lists(st.one_of(st.sampled_from(PIECES), st.text(CHARS, max_size=6)), max_size=12).map("".join)


def _tiktoken_pattern(name: str) -> str:
    """A pattern as tiktoken's own encoding definition gives it (its rank file is not fetched)."""
    original = openai_public.load_tiktoken_bpe
    openai_public.load_tiktoken_bpe = lambda *args, **kwargs: {}
    try:
        return getattr(openai_public, name)()["pat_str"]
    finally:
        openai_public.load_tiktoken_bpe = original


@cache
def trained(pattern: str, vocab_size: int = 700) -> Tokenizer:
    """A tokenizer trained by lmkit with `pattern` on the English and German fixtures."""
    corpus = [FIXTURES / "corpus.en", FIXTURES / "german.txt", FIXTURES / "tinystories_sample.txt"]
    vocab, merges = train_bpe(corpus, vocab_size, [EOT], pattern=pattern, num_workers=1)
    return Tokenizer(vocab, merges, [EOT], Layout(pattern))


@cache
def hf_tokenizer(pattern: str, folder: Path) -> tokenizers.Tokenizer:
    path = folder / f"{pattern}.json"
    trained(pattern).save(path)
    return tokenizers.Tokenizer.from_file(str(path))


@pytest.fixture(scope="module")
def json_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("patterns")


def test_presets_are_tiktokens_patterns():
    from lmkit.tokenizer.pretokenize import PRESETS as LMKIT

    assert LMKIT["gpt4"] == _tiktoken_pattern("cl100k_base")
    assert LMKIT["o200k"] == _tiktoken_pattern("o200k_base")


@pytest.mark.parametrize("pattern", PRESETS)
@settings(max_examples=150, deadline=None)
@given(text=TEXTS)
def test_ids_equal_hugging_face_tokenizers_reading_the_saved_json(pattern, text, json_folder):
    reference = hf_tokenizer(pattern, json_folder)
    assert trained(pattern).encode(text) == reference.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize(("pattern", "tiktoken_name"), [("gpt4", "cl100k_base"), ("o200k", "o200k_base")])
@settings(max_examples=150, deadline=None)
@given(text=TEXTS)
def test_ids_equal_tiktoken_with_its_own_pattern(pattern, tiktoken_name, text):
    tok = trained(pattern)
    ranks = {token: i for i, token in tok.vocab.items() if i != tok.special_ids[EOT]}
    encoding = _tiktoken_encoding(tiktoken_name, pattern)
    assert encoding._mergeable_ranks == ranks  # the cached reference was built from this vocabulary
    assert tok.encode(text + EOT + text) == encoding.encode(text + EOT + text, allowed_special={EOT})


@cache
def _tiktoken_encoding(tiktoken_name: str, pattern: str) -> tiktoken.Encoding:
    tok = trained(pattern)
    ranks = {token: i for i, token in tok.vocab.items() if i != tok.special_ids[EOT]}
    return tiktoken.Encoding(
        tiktoken_name, pat_str=_tiktoken_pattern(tiktoken_name), mergeable_ranks=ranks, special_tokens=tok.special_ids
    )


@settings(max_examples=300, deadline=None)
@given(text=TEXTS)
def test_llama3_pretokens_equal_the_published_split(text):
    split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(LLAMA3_HF), "isolated")
    assert pattern_findall("llama3")(text) == [piece for piece, _ in split.pre_tokenize_str(text)]


@pytest.mark.parametrize("pattern", PRESETS)
@settings(max_examples=300, deadline=None)
@given(text=st.one_of(TEXTS, st.text()))
def test_the_fast_pretokens_equal_the_regex_module(pattern, text):
    from lmkit.tokenizer.pretokenize import PRESETS as LMKIT

    assert split_pretokens(text, pattern) == regex.findall(LMKIT[pattern], text)


@pytest.mark.parametrize("pattern", ["gpt4", "o200k", "llama3"])
def test_the_fast_pretokens_on_every_character(pattern):
    from lmkit.tokenizer.pretokenize import PRESETS as LMKIT

    rng = random.Random(0)
    sample = [chr(c) for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF]
    rng.shuffle(sample)
    text = "".join(c + rng.choice(["", " ", "a", "A", "1", "  ", "\n", "'s", "'S", "\r\n"]) for c in sample)
    assert split_pretokens(text, pattern) == regex.findall(LMKIT[pattern], text)


def test_the_issue_example_cuts_digits_in_threes():
    text = "In 2024, the 12345 cats DON'T sleep.\r\nHello  world\n"
    expected = ["In", " ", "202", "4", ",", " the", " ", "123", "45", " cats", " DON", "'T", " sleep", ".\r\n"]
    assert pattern_findall("llama3")(text)[: len(expected)] == expected
    assert pattern_findall("gpt4")(text)[: len(expected)] == expected


@pytest.mark.parametrize("pattern", [*PRESETS, r"\p{L}+|\p{N}"])
@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.one_of(st.sampled_from([*PIECES, "ab\ncd", "12\n34", EOT]), st.text(CHARS, max_size=4))))
def test_chunks_cut_where_no_pretoken_crosses(pattern, parts):
    text = "".join(parts)
    chunks = iter_chunks(io.BytesIO(text.encode()), [EOT], 8, pattern)
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], [EOT], Layout(pattern))
    assert [i for _, chunk in chunks for i in tok._pretokens(chunk.decode())] == tok._pretokens(text)


def test_a_custom_regex_keeps_the_text_it_does_not_match_like_a_split():
    split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(r"\p{L}+"), "isolated")
    text = "ab, cd!! 12"
    assert pattern_findall(r"\p{L}+")(text) == [piece for piece, _ in split.pre_tokenize_str(text)]


def test_ignore_merges_takes_a_pretoken_in_the_vocabulary_whole(json_folder):
    tok = trained("llama3")
    obj = json.loads(tok.to_json())
    obj["model"]["vocab"]["Ġxyzzy"] = new_id = tok.vocab_size
    obj["added_tokens"][0]["id"] = obj["model"]["vocab"][EOT] = new_id + 1
    text = "a xyzzy and more xyzzy"
    for ignore in (False, True):
        obj["model"]["ignore_merges"] = ignore
        path = json_folder / f"ignore_{ignore}.json"
        path.write_text(json.dumps(obj), encoding="utf-8")
        ids = Tokenizer.load(path).encode(text)
        assert ids == tokenizers.Tokenizer.from_file(str(path)).encode(text, add_special_tokens=False).ids
        assert (new_id in ids) == ignore


def test_cli_trains_with_a_preset_and_inspect_shows_it(runner, tmp_path):
    out = tmp_path / "tok.json"
    args = ["tokenizer", "train", str(FIXTURES / "german.txt"), "--vocab-size", "270", "--pattern", "gpt4"]
    assert runner.invoke(app, [*args, "--out", str(out)]).exit_code == 0
    pre = json.loads(out.read_text())["pre_tokenizer"]
    assert [step["type"] for step in pre["pretokenizers"]] == ["Split", "ByteLevel"]
    result = runner.invoke(app, ["tokenizer", "inspect", str(out), "--json"])
    assert json.loads(result.stdout)["pattern"] == "gpt4"


@pytest.mark.parametrize(
    ("pattern", "message"),
    [("(unclosed", "neither a preset"), (r"\p{N}{1,3}+", "possessive {n,m}+"), ("a*", "matches the empty string")],
)
def test_cli_refuses_a_bad_pattern(runner, tmp_path, pattern, message):
    out = tmp_path / "tok.json"
    args = ["tokenizer", "train", str(FIXTURES / "german.txt"), "--vocab-size", "270", "--pattern", pattern]
    assert_input_error(runner.invoke(app, [*args, "--out", str(out)]), message)
    assert not out.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"normalizer": {"type": "NFC"}}, "the normalizer 'NFC' is not supported"),
        ({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}}, "pre_tokenizer ending in 'Metaspace'"),
        ({"model.byte_fallback": True}, "model.byte_fallback"),
        ({"post_processor": {"type": "BertProcessing"}}, "post_processor 'BertProcessing'"),
    ],
)
def test_layouts_lmkit_cannot_reproduce_are_refused(runner, tmp_path, change, message):
    obj = json.loads(trained("gpt2").to_json())
    for key, value in change.items():
        if key.startswith("model."):
            obj["model"][key.removeprefix("model.")] = value
        else:
            obj[key] = value
    path = tmp_path / "tok.json"
    path.write_text(json.dumps(obj), encoding="utf-8")
    assert_input_error(runner.invoke(app, ["tokenizer", "encode", "--text", "hi", "--tokenizer", str(path)]), message)


def _letters(n: int) -> str:
    """A distinct run of letters for each n (base 26)."""
    word = ""
    while True:
        n, digit = divmod(n, 26)
        word += "abcdefghijklmnopqrstuvwxyz"[digit]
        if n == 0:
            return word


@pytest.fixture(scope="module")
def published_llama3(tmp_path_factory) -> Path:
    """A tokenizer.json laid out as Llama 3's: made by `tokenizers`, with ignore_merges, 256 added special
    tokens, a post-processor adding a BOS, and 200,000 more vocabulary entries reachable only whole."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(ignore_merges=True))
    split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(LLAMA3_HF), "isolated")
    byte_level = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([split, byte_level])
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=800, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train([str(FIXTURES / "corpus.en"), str(FIXTURES / "german.txt")], trainer)
    obj = json.loads(tok.to_str())
    vocab = obj["model"]["vocab"]
    for n in range(200_000):
        vocab.setdefault("Ġzq" + _letters(n), len(vocab))
    tok = tokenizers.Tokenizer.from_str(json.dumps(obj))
    specials = ["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(254)]
    tok.add_special_tokens(specials)
    tok.post_processor = tokenizers.processors.Sequence(
        [
            tokenizers.processors.ByteLevel(trim_offsets=False),
            tokenizers.processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A:0 <|begin_of_text|>:1 $B:1",
                special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))],
            ),
        ]
    )
    path = tmp_path_factory.mktemp("published") / "tokenizer.json"
    tok.save(str(path))
    return path


@settings(max_examples=150, deadline=None)
@given(text=st.one_of(TEXTS, st.lists(st.integers(0, 199_999).map(lambda n: " zq" + _letters(n))).map("".join)))
def test_a_published_llama3_layout_gives_the_ids_of_tokenizers(published_llama3, text):
    tok, reference = _published(published_llama3)
    text = text + "<|reserved_special_token_7|>" + text
    assert tok.encode(text) == reference.encode(text, add_special_tokens=False).ids


def test_a_published_llama3_layout_records_its_bos_and_size(published_llama3):
    tok, reference = _published(published_llama3)
    assert tok.layout.bos_token == "<|begin_of_text|>" and tok.pattern == "llama3"
    assert tok.vocab_size == reference.get_vocab_size() > 200_000 and len(tok.special_tokens) == 256
    assert reference.encode("hi").ids[0] == tok.special_ids["<|begin_of_text|>"]
    assert tok.encode_array(" zqbaaa").dtype == "uint32"


def test_a_prompt_starts_with_the_bos_token_as_tokenizers_adds_it(published_llama3):
    """What a model reads for a prompt: the BOS the post-processor adds (tokenizers' default encode), then the
    text; cropped to the last tokens, the BOS stays first."""
    tok, reference = _published(published_llama3)
    text = "Once upon a time, zqbaaa and the <|reserved_special_token_7|> end"
    assert tok.encode_prompt(text) == reference.encode(text).ids
    bos = tok.special_ids["<|begin_of_text|>"]
    assert tok.encode_prompt(text, max_tokens=4) == [bos, *tok.encode(text)[-3:]]


@cache
def _published(path: Path) -> tuple[Tokenizer, tokenizers.Tokenizer]:
    return Tokenizer.load(path), tokenizers.Tokenizer.from_file(str(path))
