"""tiktoken rank files read through a TOML descriptor: ids equal tiktoken's, on BPE-trained and shuffled ranks.

The rank files are written here from a vocabulary that Hugging Face `tokenizers` trains on the fixtures, and
tiktoken reads them with its own loader.
"""

from __future__ import annotations

import base64
import random
from functools import cache
from pathlib import Path

import pytest
import tiktoken
import tokenizers
from gpt2_reference import _gpt2_byte_decoder
from helpers import assert_input_error
from hypothesis import given, settings
from test_patterns import LLAMA3_HF, TEXTS, _tiktoken_pattern

from lmkit.cli.app import app
from lmkit.tokenizer import Tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
EOT = "<|endoftext|>"


@cache
def hf_trained_ranks() -> dict[bytes, int]:
    """A 600-token byte-level BPE vocabulary trained by `tokenizers` with Llama 3's pre-tokenizer, as ranks."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(LLAMA3_HF), "isolated")
    byte_level = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([split, byte_level])
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train([str(FIXTURES / name) for name in ("corpus.en", "german.txt", "tinystories_sample.txt")], trainer)
    decoder = _gpt2_byte_decoder()
    return {bytes(decoder[c] for c in token): i for token, i in tok.get_vocab().items()}


@cache
def shuffled_ranks() -> dict[bytes, int]:
    """The same tokens with the ranks of the multi-byte ones shuffled: not in merge order any more."""
    ranks = hf_trained_ranks()
    long_tokens = [t for t in ranks if len(t) > 1]
    new_ranks = sorted(ranks[t] for t in long_tokens)
    random.Random(0).shuffle(new_ranks)
    return {**ranks, **dict(zip(long_tokens, new_ranks, strict=True))}


def write_descriptor(folder: Path, ranks: dict[bytes, int], name: str) -> Path:
    lines = [f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in ranks.items()]
    (folder / f"{name}.tiktoken").write_text("".join(lines))
    descriptor = folder / f"{name}.toml"
    descriptor.write_text(
        f'ranks = "{name}.tiktoken"\npattern = "gpt4"\n[special_tokens]\n"{EOT}" = {len(ranks)}\n', encoding="utf-8"
    )
    return descriptor


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict[str, tuple[Tokenizer, tiktoken.Encoding]]:
    folder = tmp_path_factory.mktemp("ranks")
    pairs = {}
    for name, ranks in (("trained", hf_trained_ranks()), ("shuffled", shuffled_ranks())):
        descriptor = write_descriptor(folder, ranks, name)
        encoding = tiktoken.Encoding(
            name,
            pat_str=_tiktoken_pattern("cl100k_base"),
            mergeable_ranks=tiktoken.load.load_tiktoken_bpe(str(folder / f"{name}.tiktoken")),
            special_tokens={EOT: len(ranks)},
        )
        pairs[name] = (Tokenizer.load(descriptor), encoding)
    return pairs


@pytest.mark.parametrize("name", ["trained", "shuffled"])
@settings(max_examples=200, deadline=None)
@given(text=TEXTS)
def test_ids_equal_tiktoken_reading_the_same_rank_file(loaded, name, text):
    tok, encoding = loaded[name]
    text = text + EOT + text
    assert tok.encode(text) == encoding.encode(text, allowed_special={EOT})


def test_shuffled_ranks_merge_otherwise_than_the_trained_ones(loaded):
    # Without this the shuffled case would not test the rank rule at all.
    text = (FIXTURES / "corpus.en").read_text()[:5000]
    assert loaded["shuffled"][0].encode(text) != loaded["trained"][0].encode(text)


def test_a_bpe_trained_rank_file_saved_as_tokenizer_json_gives_the_same_ids_in_tokenizers(loaded, tmp_path):
    tok, encoding = loaded["trained"]
    tok.save(tmp_path / "tokenizer.json")
    reference = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = (FIXTURES / "corpus.en").read_text()[:20000] + "In 2024, the 12345 cats DON'T sleep.\r\n"
    assert reference.encode(text, add_special_tokens=False).ids == tok.encode(text) == encoding.encode(text)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("aGk= 0\n!!! 1\n", "line 2: not 'base64-token rank'"),
        ("aGk= 0\naGo= 0\n", "line 2: rank 0 appears twice"),
        ("aGk= 0\naGk= 1\n", "line 2: token b'hi' appears twice"),
        ("aGk=\n", "line 1: not 'base64-token rank'"),
    ],
)
def test_bad_rank_files_are_refused_in_one_line(runner, tmp_path, content, message):
    (tmp_path / "bad.tiktoken").write_text(content)
    descriptor = tmp_path / "bad.toml"
    descriptor.write_text('ranks = "bad.tiktoken"\npattern = "gpt4"\n')
    result = runner.invoke(app, ["tokenizer", "encode", "--text", "hi", "--tokenizer", str(descriptor)])
    assert_input_error(result, message)


def test_a_bare_rank_file_asks_for_a_descriptor(runner, tmp_path):
    (tmp_path / "cl100k_base.tiktoken").write_text("aGk= 0\n")
    result = runner.invoke(app, ["tokenizer", "inspect", str(tmp_path / "cl100k_base.tiktoken")])
    assert_input_error(result, 'give a .toml file holding ranks = "cl100k_base.tiktoken"')


@pytest.mark.parametrize(
    ("text", "message"),
    [('ranks = "r.tiktoken"\npattern = "gpt4"\ncolour = 1\n', "unknown key 'colour'"), ("ranks = [", "not valid TOML")],
)
def test_bad_descriptors_are_refused_in_one_line(runner, tmp_path, text, message):
    (tmp_path / "d.toml").write_text(text)
    result = runner.invoke(app, ["tokenizer", "encode", "--text", "hi", "--tokenizer", str(tmp_path / "d.toml")])
    assert_input_error(result, message)
