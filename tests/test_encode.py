"""Encoding corpora into .npy files (`encode_file`, `lmkit tokenizer encode`), `inspect`, and their bad input."""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from gpt2_reference import EOT, tiktoken_gpt2, tiktoken_ids

from lmkit.cli.app import app
from lmkit.errors import InputError
from lmkit.tokenizer import Tokenizer
from lmkit.tokenizer import encode as encode_module
from lmkit.tokenizer.encode import encode_file, npy_header

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return Tokenizer.from_files(FIXTURES / "gpt2_vocab.json", FIXTURES / "gpt2_merges.txt", [EOT])


@pytest.fixture(scope="module")
def tok_file(gpt2: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    gpt2.save(path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture texts as documents joined by <|endoftext|>."""
    names = ["tinystories_sample.txt", "address.txt", "german.txt", "corpus.en"]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(EOT.join((FIXTURES / n).read_text(encoding="utf-8") for n in names), encoding="utf-8")
    return path


def _documents_corpus(folder: Path, count: int) -> tuple[Path, list[str]]:
    docs = [f"Document {i}: the cat sat on mat number {i * 7}.\n  Then it slept. {EOT}" for i in range(count - 1)]
    docs.append(f"The last document, {count - 1}, has no separator.\n")
    path = folder / "docs.txt"
    path.write_text("".join(docs), encoding="utf-8")
    return path, docs


def _error(result) -> str:
    """The error message with rich's line wrapping undone."""
    return " ".join(result.stderr.split())


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_cli_writes_tiktoken_ids(runner, gpt2: Tokenizer, tok_file: Path, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokens.npy"
    result = runner.invoke(
        app, ["tokenizer", "encode", str(corpus), "--tokenizer", str(tok_file), "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    tokens = np.load(out, mmap_mode="r")
    expected = tiktoken_ids(corpus.read_text(encoding="utf-8"))
    assert tokens.dtype == np.uint16 and tokens.tolist() == expected
    assert gpt2.decode(tokens) == corpus.read_text(encoding="utf-8")
    summary = json.loads(result.stdout)
    assert summary["tokens"] == len(expected)
    assert summary["bytes"] == corpus.stat().st_size
    assert summary["bytes/token"] == pytest.approx(corpus.stat().st_size / len(expected))


def test_same_file_for_any_worker_count(gpt2: Tokenizer, corpus: Path, tmp_path: Path) -> None:
    expected = tiktoken_ids(corpus.read_text(encoding="utf-8"))
    contents = []
    for workers in (1, 2, 3):
        out = tmp_path / f"tokens{workers}.npy"
        encode_file(corpus, gpt2, out, workers=workers, chunk_bytes=4096, show_progress=False)
        contents.append(out.read_bytes())
    assert contents[0] == contents[1] == contents[2]
    assert np.load(tmp_path / "tokens2.npy").tolist() == expected


def test_uint32_when_ids_exceed_16_bits(tmp_path: Path) -> None:
    vocab = {**{b: bytes([b]) for b in range(256)}, 70_000: EOT.encode()}
    (tmp_path / "in.txt").write_text(f"ab{EOT}c", encoding="utf-8")
    encode_file(tmp_path / "in.txt", Tokenizer(vocab, [], [EOT]), tmp_path / "out.npy", show_progress=False)
    tokens = np.load(tmp_path / "out.npy", mmap_mode="r")
    assert tokens.dtype == np.uint32
    assert tokens.tolist() == [ord("a"), ord("b"), 70_000, ord("c")]


def test_npy_header_is_read_by_numpy() -> None:
    import io

    for dtype, length in [(np.dtype(np.uint16), 0), (np.dtype(np.uint32), 10**15)]:
        stream = io.BytesIO(npy_header(dtype, length))
        assert np.lib.format.read_magic(stream) == (1, 0)
        assert np.lib.format.read_array_header_1_0(stream) == ((length,), False, dtype)


def test_val_fraction_splits_by_documents(runner, tok_file: Path, tmp_path: Path) -> None:
    corpus, docs = _documents_corpus(tmp_path, 20)
    out = tmp_path / "tokens.npy"
    args = ["tokenizer", "encode", str(corpus), "--tokenizer", str(tok_file), "--out", str(out)]
    result = runner.invoke(app, [*args, "--val-fraction", "0.1", "--workers", "2", "--json"])
    assert result.exit_code == 0, result.stderr
    assert not out.exists()
    train = np.load(tmp_path / "tokens.train.npy", mmap_mode="r").tolist()
    val = np.load(tmp_path / "tokens.val.npy", mmap_mode="r").tolist()
    val_docs = [9, 19]  # every tenth document
    assert val == sum((tiktoken_ids(docs[i]) for i in val_docs), [])
    assert train == sum((tiktoken_ids(d) for i, d in enumerate(docs) if i not in val_docs), [])
    summary = json.loads(result.stdout)
    assert (summary["documents"], summary["train tokens"], summary["val tokens"]) == (20, len(train), len(val))


def test_val_split_is_the_same_across_chunks(gpt2: Tokenizer, tmp_path: Path) -> None:
    corpus, docs = _documents_corpus(tmp_path, 30)
    for name, chunk_bytes in [("one", 1 << 20), ("many", 100)]:
        encode_file(corpus, gpt2, tmp_path / f"{name}.npy", val_fraction=0.25, chunk_bytes=chunk_bytes, workers=2)
    for split in ("train", "val"):
        assert (tmp_path / f"one.{split}.npy").read_bytes() == (tmp_path / f"many.{split}.npy").read_bytes()
    val = np.load(tmp_path / "many.val.npy").tolist()
    assert val == sum((tiktoken_ids(docs[i]) for i in (3, 7, 11, 15, 19, 23, 27)), [])


def test_val_fraction_that_leaves_a_split_empty(runner, tok_file: Path, tmp_path: Path) -> None:
    corpus, _ = _documents_corpus(tmp_path, 3)
    out = tmp_path / "tokens.npy"
    args = ["tokenizer", "encode", str(corpus), "--tokenizer", str(tok_file), "--out", str(out), "--val-fraction"]
    result = runner.invoke(app, [*args, "0.1"])
    assert result.exit_code == 2
    assert "the validation split would be empty: the corpus has 3 documents" in _error(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.txt"]


def test_text_prints_ids(runner, tok_file: Path) -> None:
    text = "Hello world, it's 😀"
    result = runner.invoke(app, ["tokenizer", "encode", "--text", text, "--tokenizer", str(tok_file)])
    assert result.exit_code == 0
    assert result.stdout.strip() == str(tiktoken_ids(text))
    shown = runner.invoke(app, ["tokenizer", "encode", "--text", text, "--tokenizer", str(tok_file), "--show"])
    assert shown.exit_code == 0 and "15496" in shown.stdout and "' world'" in shown.stdout
    as_json = runner.invoke(app, ["tokenizer", "encode", "--text", "Hello", "--tokenizer", str(tok_file), "--json"])
    assert json.loads(as_json.stdout) == {"ids": [15496]}


def test_decode_prints_text(runner, tok_file: Path) -> None:
    result = runner.invoke(app, ["tokenizer", "decode", "15496", "995", "--tokenizer", str(tok_file)])
    assert result.exit_code == 0 and result.stdout == "Hello world\n"


def test_inspect_reports_the_tokenizer_and_a_sample(runner, tok_file: Path) -> None:
    sample = FIXTURES / "corpus.en"
    args = ["tokenizer", "inspect", str(tok_file), "--sample", str(sample), "--top", "3", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["vocab size"] == 50257 and facts["merges"] == 50000 and facts["special tokens"] == [EOT]
    longest = sorted(map(len, tiktoken_gpt2().token_byte_values()), reverse=True)[:3]
    assert [len(t.encode()) for t in facts["longest tokens"]] == longest
    expected = tiktoken_ids(sample.read_text(encoding="utf-8"))
    assert facts["sample tokens"] == len(expected)
    assert facts["bytes/token"] == pytest.approx(sample.stat().st_size / len(expected))
    counts = Counter(expected).most_common(3)
    assert list(facts["most frequent tokens"].values()) == [n for _, n in counts]
    table = runner.invoke(app, ["tokenizer", "inspect", str(tok_file)])
    assert table.exit_code == 0 and "50,257" in table.stdout


def test_help_has_an_example(runner) -> None:
    for command in ("encode", "inspect", "decode"):
        result = runner.invoke(app, ["tokenizer", command, "--help"])
        assert result.exit_code == 0 and "Example: lmkit tokenizer " + command in result.stdout


# Bad input: one line on stderr, exit 2, nothing written.


def _encode(runner, corpus: Path, tok: Path, out: Path, *extra: str):
    return runner.invoke(app, ["tokenizer", "encode", str(corpus), "--tokenizer", str(tok), "--out", str(out), *extra])


def test_missing_tokenizer_file(runner, corpus: Path, tmp_path: Path) -> None:
    result = _encode(runner, corpus, tmp_path / "nope.json", tmp_path / "t.npy")
    assert result.exit_code == 2
    assert f"tokenizer file {tmp_path / 'nope.json'} does not exist" in _error(result)
    result = runner.invoke(app, ["tokenizer", "inspect", str(tmp_path / "nope.json")])
    assert result.exit_code == 2 and "does not exist" in _error(result)


@pytest.mark.parametrize(
    ("content", "message"),
    [('{"model": {"vocab": ', "is not valid JSON"), ('{"hello": 1}', "is not a byte-level BPE tokenizer.json")],
)
def test_corrupt_tokenizer_file(runner, corpus: Path, tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content, encoding="utf-8")
    result = _encode(runner, corpus, bad, tmp_path / "t.npy")
    assert result.exit_code == 2 and message in _error(result)
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "t.npy").exists()


def _latin1_corpus(folder: Path) -> tuple[Path, str]:
    corpus = folder / "latin1.txt"
    corpus.write_bytes("café au lait\n".encode() * 1000 + "déjà vu\n".encode("latin-1"))
    return corpus, f"the corpus is not UTF-8: invalid byte 0xe9 at byte {14 * 1000 + 1:,}"


def test_corpus_that_is_not_utf8(runner, tok_file: Path, tmp_path: Path) -> None:
    corpus, message = _latin1_corpus(tmp_path)
    result = _encode(runner, corpus, tok_file, tmp_path / "t.npy")
    assert result.exit_code == 2 and message in _error(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latin1.txt"]


def test_bad_utf8_found_by_a_worker_process(gpt2: Tokenizer, tmp_path: Path) -> None:
    corpus, message = _latin1_corpus(tmp_path)
    with pytest.raises(InputError, match=message):
        encode_file(corpus, gpt2, tmp_path / "t.npy", workers=2, chunk_bytes=1024, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latin1.txt"]


def test_ctrl_c_stops_the_workers_and_writes_nothing(
    gpt2: Tokenizer, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collect = encode_module._ChunkWorkers.collect
    calls = []

    def interrupted_after_one_chunk(self):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return collect(self)

    monkeypatch.setattr(encode_module._ChunkWorkers, "collect", interrupted_after_one_chunk)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        encode_file(corpus, gpt2, out / "t.npy", workers=2, chunk_bytes=4096, show_progress=False)
    assert list(out.iterdir()) == []
    assert multiprocessing.active_children() == []


def _die(connection, *args) -> None:
    connection.recv()
    os._exit(3)


def test_a_worker_that_dies_is_a_runtime_error(
    gpt2: Tokenizer, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encode_module, "_serve_chunks", _die)
    with pytest.raises(RuntimeError, match=r"an encoding worker stopped unexpectedly \(exit code 3\)"):
        encode_file(corpus, gpt2, tmp_path / "t.npy", workers=2, chunk_bytes=4096, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert multiprocessing.active_children() == []


def test_out_in_a_missing_folder(runner, tok_file: Path, corpus: Path, tmp_path: Path) -> None:
    result = _encode(runner, corpus, tok_file, tmp_path / "missing" / "t.npy")
    assert result.exit_code == 2
    assert f"output folder {tmp_path / 'missing'} does not exist" in _error(result)


def test_missing_corpus(runner, tok_file: Path, tmp_path: Path) -> None:
    result = _encode(runner, tmp_path / "none.txt", tok_file, tmp_path / "t.npy")
    assert result.exit_code == 2 and "does not exist" in _error(result)
    assert _no_temp_files(tmp_path)


def test_decode_ids_out_of_range(runner, tok_file: Path) -> None:
    result = runner.invoke(app, ["tokenizer", "decode", "15496", "50300", "--tokenizer", str(tok_file)])
    assert result.exit_code == 2
    assert "token id 50300 is not in the vocabulary (ids run from 0 to 50256)" in _error(result)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], 'nothing to encode: give a CORPUS file (with --out) or --text "some text"'),
        (["corpus.txt", "--text", "hi"], "not both"),
        (["corpus.txt"], "--out is required"),
        (["corpus.txt", "--out", "t.npy", "--val-fraction", "1.5"], "--val-fraction must be in [0, 1)"),
        (["corpus.txt", "--out", "t.npy", "--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_bad_arguments(runner, tok_file: Path, corpus: Path, args: list[str], message: str, monkeypatch) -> None:
    monkeypatch.chdir(corpus.parent)
    result = runner.invoke(app, ["tokenizer", "encode", *args, "--tokenizer", str(tok_file)])
    assert result.exit_code == 2 and message in _error(result)
