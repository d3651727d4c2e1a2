"""GPT-2 vocab.json + merges.txt are written so that reading them back gives the same tokenizer."""

from lmkit.tokenizer import Tokenizer
from lmkit.tokenizer.formats import read_gpt2_files, write_gpt2_files


def test_gpt2_files_round_trip(tmp_path, fixtures):
    vocab, merges = read_gpt2_files(fixtures / "gpt2_vocab.json", fixtures / "gpt2_merges.txt")
    write_gpt2_files(tmp_path, vocab, merges)
    assert (tmp_path / "merges.txt").read_text().startswith("#version")
    assert read_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt") == (vocab, merges)
    text = (fixtures / "address.txt").read_text()
    original = Tokenizer.from_files(fixtures / "gpt2_vocab.json", fixtures / "gpt2_merges.txt")
    rewritten = Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert rewritten.encode(text) == original.encode(text)
