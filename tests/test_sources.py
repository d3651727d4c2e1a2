"""Corpora as they come (`lmkit.tokenizer.sources`): many files, folders, globs, standard input, JSON Lines,
Parquet, gzip and zstd. Training and encoding them must give exactly what the same documents give when
concatenated by hand, with the separator between them, into one .txt file; and bad input is one line."""

from __future__ import annotations

import base64
import errno
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from gpt2_reference import EOT

from lmkit.cli.app import app
from lmkit.errors import InputError
from lmkit.tokenizer import Tokenizer, train_bpe
from lmkit.tokenizer.counting import count_pretokens
from lmkit.tokenizer.encode import encode_file
from lmkit.tokenizer.sources import BLOCK_BYTES, find_corpus, open_corpus

FIXTURES = Path(__file__).parent / "fixtures"


def _documents() -> list[str]:
    """About 70 real documents: stories, paragraphs of English and German, an empty one, unusual edges."""
    docs = (FIXTURES / "tinystories_sample.txt").read_text(encoding="utf-8").split(EOT)
    docs += (FIXTURES / "address.txt").read_text(encoding="utf-8").split("\n\n")
    docs += (FIXTURES / "german.txt").read_text(encoding="utf-8").split("\n")
    docs += (FIXTURES / "corpus.en").read_text(encoding="utf-8")[:30_000].split("\n\n")[:40]
    # Edges: an empty document, one with no final newline, spaces at the ends, characters outside the BMP.
    return [*docs[:10], "", "no newline at the end", "  spaces both ends  ", "emoji 🙂 and 𝔘𝔫𝔦", *docs[10:]]


DOCS = _documents()


def _write_zst(path: Path, data: bytes) -> None:
    """Two zstd frames, as parallel compressors write them."""
    half = len(data) // 2
    compressor = zstandard.ZstdCompressor()
    path.write_bytes(compressor.compress(data[:half]) + compressor.compress(data[half:]))


def _jsonl(docs: list[str], field: str = "text") -> bytes:
    lines = [json.dumps({"id": i, field: doc, "meta": {"n": 1}}) for i, doc in enumerate(docs)]
    lines.insert(3, "")  # blank lines are skipped
    return ("\n".join(lines) + "\n").encode("utf-8")


def _write_parquet(path: Path, docs: list[str], field: str = "text") -> None:
    table = pa.table({"id": list(range(len(docs))), field: docs})
    pq.write_table(table, path, row_group_size=max(len(docs) // 3, 1))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """The same documents in every layout, as the command-line arguments naming them; "reference" is the
    one .txt file a user would make by hand (documents joined by <|endoftext|>)."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "reference.txt").write_text(EOT.join(DOCS), encoding="utf-8")
    folder = root / "folder"
    for i, doc in enumerate(DOCS):  # nested folders; names sort in document order
        path = folder / f"part{i // 10}" / f"doc{i:03d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(doc, encoding="utf-8")
    (folder / "part0" / ".hidden.txt").write_text("hidden files are skipped")
    (folder / "README.md").write_text("files with other extensions in a folder are skipped")
    (root / "docs.jsonl").write_bytes(_jsonl(DOCS))
    (root / "docs.jsonl.gz").write_bytes(gzip.compress(_jsonl(DOCS)))
    _write_zst(root / "docs.jsonl.zst", _jsonl(DOCS))
    _write_parquet(root / "docs.parquet", DOCS)
    _write_zst(root / "docs.parquet.zst", (root / "docs.parquet").read_bytes())
    half = len(DOCS) // 2
    (root / "first.json").write_bytes(_jsonl(DOCS[:half]))
    _write_parquet(root / "second.parquet", DOCS[half:])
    return {
        "reference": [str(root / "reference.txt")],
        "folder": [str(folder)],
        "glob": [str(folder / "**" / "*.txt")],
        "jsonl": [str(root / "docs.jsonl")],
        "jsonl.gz": [str(root / "docs.jsonl.gz")],
        "jsonl.zst": [str(root / "docs.jsonl.zst")],
        "parquet": [str(root / "docs.parquet")],
        "parquet.zst": [str(root / "docs.parquet.zst")],
        "mixed": [str(root / "first.json"), str(root / "second.parquet")],
    }


LAYOUTS = ["folder", "glob", "jsonl", "jsonl.gz", "jsonl.zst", "parquet", "parquet.zst", "mixed"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_counts_equal_the_concatenated_text_for_any_worker_count(inputs, layout: str) -> None:
    reference = count_pretokens(inputs["reference"][0], [EOT], num_workers=1)
    for workers in (1, 2):
        # Small chunks, so chunks span documents and files and both workers get many.
        counted = count_pretokens(inputs[layout], [EOT], num_workers=workers, chunk_bytes=2048, parallel_min_bytes=0)
        assert counted.counts == reference.counts
        assert (counted.corpus_bytes, counted.documents) == (reference.corpus_bytes, reference.documents)
    assert reference.documents == len(DOCS)


@pytest.mark.parametrize("layout", ["folder", "jsonl.zst", "parquet"])
def test_training_equals_the_concatenated_text(inputs, layout: str) -> None:
    expected = train_bpe(inputs["reference"][0], 400, [EOT], num_workers=1)
    assert train_bpe(inputs[layout], 400, [EOT], num_workers=2) == expected


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return Tokenizer.from_files(FIXTURES / "gpt2_vocab.json", FIXTURES / "gpt2_merges.txt", [EOT])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_encoding_equals_the_concatenated_text_for_any_worker_count(inputs, layout, gpt2, tmp_path) -> None:
    expected = np.array(gpt2.encode(EOT.join(DOCS)), dtype=np.uint16)
    for workers in (1, 2):
        out = tmp_path / f"tokens{workers}.npy"
        summary = encode_file(inputs[layout], gpt2, out, workers=workers, chunk_bytes=2048, show_progress=False)
        assert np.array_equal(np.load(out), expected)
        assert summary["bytes"] == len(EOT.join(DOCS).encode("utf-8"))


def test_chunks_larger_than_a_pipe_reach_the_workers(gpt2, tmp_path) -> None:
    # Default-size chunks (256 KiB) of a JSON Lines corpus go to the workers as bytes, more than a pipe holds,
    # while the workers send back ids: this once hung for ever, hence a separate process with a time limit.
    docs = DOCS * 40
    (tmp_path / "docs.jsonl").write_bytes(_jsonl(docs))
    gpt2.save(tmp_path / "tok.json")
    args = ["tokenizer", "encode", str(tmp_path / "docs.jsonl"), "--tokenizer", str(tmp_path / "tok.json")]
    args += ["--out", str(tmp_path / "t.npy"), "--workers", "2"]
    subprocess.run([sys.executable, "-m", "lmkit", *args], check=True, timeout=300, capture_output=True)
    assert np.array_equal(np.load(tmp_path / "t.npy"), gpt2.encode(EOT.join(docs)))


def test_validation_split_by_document_is_the_same(inputs, gpt2, tmp_path) -> None:
    for layout in ("reference", "jsonl.zst"):
        encode_file(inputs[layout], gpt2, tmp_path / f"{layout}.npy", val_fraction=0.2, workers=2, chunk_bytes=2048)
    for part in ("train", "val"):
        reference = np.load(tmp_path / f"reference.{part}.npy")
        assert np.array_equal(np.load(tmp_path / f"jsonl.zst.{part}.npy"), reference)
    assert np.count_nonzero(np.load(tmp_path / "reference.val.npy") == gpt2.special_ids[EOT]) >= len(DOCS) // 5 - 1


def test_no_separator_concatenates_the_files_as_they_are(inputs, tmp_path) -> None:
    # Without a separator, words at the ends of files run together, exactly as in `cat`.
    joined = tmp_path / "cat.txt"
    joined.write_text("".join(DOCS), encoding="utf-8")
    corpus = find_corpus(inputs["folder"], separator="")
    assert count_pretokens(corpus, [], chunk_bytes=1024).counts == count_pretokens(joined, []).counts
    assert train_bpe(corpus, 320, []) == train_bpe(joined, 320, [])


def test_text_field_and_separator_options(inputs, tmp_path, runner) -> None:
    (tmp_path / "docs.jsonl").write_bytes(_jsonl(DOCS, field="content"))
    reference = tmp_path / "reference.txt"
    reference.write_text("\n\n".join(DOCS), encoding="utf-8")
    corpus = find_corpus(tmp_path / "docs.jsonl", text_field="content", separator="\n\n")
    assert train_bpe(corpus, 350, [EOT]) == train_bpe(reference, 350, [EOT])
    out = tmp_path / "tok.json"
    args = ["tokenizer", "train", str(tmp_path / "docs.jsonl"), "--vocab-size", "350", "--special-token", EOT]
    result = runner.invoke(app, [*args, "--text-field", "content", "--separator", "\n\n", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["documents"] == 1  # the separator is not a special token: one stretch


def test_standard_input_with_format(inputs, gpt2, tmp_path, runner) -> None:
    tok = tmp_path / "tok.json"
    gpt2.save(tok)
    out = tmp_path / "tokens.npy"
    args = ["tokenizer", "encode", "-", "--format", "jsonl.gz", "--tokenizer", str(tok), "--out", str(out)]
    result = runner.invoke(app, args, input=gzip.compress(_jsonl(DOCS)))
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.load(out), gpt2.encode(EOT.join(DOCS)))
    text = runner.invoke(app, ["tokenizer", "encode", "-", "--tokenizer", str(tok), "--out", str(out)], input="Hi!")
    assert text.exit_code == 0, text.output
    assert np.load(out).tolist() == gpt2.encode("Hi!")


def test_format_overrides_the_extension(tmp_path) -> None:
    (tmp_path / "dump.data.gz").write_bytes(gzip.compress(_jsonl(DOCS[:5])))
    corpus = find_corpus(tmp_path / "dump.data.gz", input_format="jsonl")
    assert [(f.format, f.compression) for f in corpus.files] == [("jsonl", "gz")]
    reference = tmp_path / "reference.txt"
    reference.write_text(EOT.join(DOCS[:5]), encoding="utf-8")
    assert count_pretokens(corpus, [EOT]).counts == count_pretokens(reference, [EOT]).counts


def test_folder_order_is_sorted_and_recursive(inputs) -> None:
    names = [f.path.name for f in find_corpus(inputs["folder"]).files]
    assert names == [f"doc{i:03d}.txt" for i in range(len(DOCS))]


class _Recorder:
    """Stands in for a progress bar: adds up the bytes read from disk."""

    def __init__(self) -> None:
        self.total = 0

    def advance(self, amount: float = 1) -> None:
        self.total += amount


@pytest.mark.parametrize("suffix", [".txt", ".jsonl.gz", ".jsonl.zst"])
def test_inputs_are_read_as_a_stream(tmp_path, suffix: str) -> None:
    # About 5 MB of text that hardly compresses: reading the first 100 KB of the joined text must read a block
    # or two from disk, not the file.
    text = base64.b64encode(np.random.default_rng(0).bytes(4_000_000)).decode("ascii")
    docs = [text[i : i + 1000] for i in range(0, len(text), 1000)]
    path = tmp_path / f"big{suffix}"
    data = _jsonl(docs) if "jsonl" in suffix else "\n".join(docs).encode()
    if suffix.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    elif suffix.endswith(".zst"):
        _write_zst(path, data)
    else:
        path.write_bytes(data)
    recorder = _Recorder()
    stream = open_corpus(find_corpus([path, path]), recorder)
    assert len(stream.read(100_000)) == 100_000
    assert recorder.total <= 2 * BLOCK_BYTES < path.stat().st_size
    while stream.read(1 << 20):
        pass
    assert recorder.total == 2 * path.stat().st_size  # and in the end everything, once


# --- bad input ------------------------------------------------------------------------------------------------


def _bad(runner, tmp_path: Path, command: str, corpus: list[str], *options: str) -> str:
    """Run the command; check exit 2, one error line (besides a progress bar) and nothing written."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    tok = tmp_path / "tok.json"
    if command == "train":
        args = ["tokenizer", "train", *corpus, "--vocab-size", "300", "--special-token", EOT]
        args += ["--out", str(out / "t.json")]
    else:
        args = ["tokenizer", "encode", *corpus, "--tokenizer", str(tok), "--out", str(out / "t.npy"), "--workers", "2"]
    result = runner.invoke(app, [*args, *options])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith(("Pre-tokenizing", "Encoding"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert list(out.iterdir()) == []  # nothing written, no temporary file left
    return lines[0]


@pytest.fixture
def tok_dir(tmp_path: Path, gpt2: Tokenizer) -> Path:
    gpt2.save(tmp_path / "tok.json")
    return tmp_path


@pytest.mark.parametrize("command", ["train", "encode"])
def test_bad_inputs_name_the_file_and_line(command, runner, tok_dir: Path) -> None:
    d = tok_dir
    bad = lambda corpus, *options: _bad(runner, d, command, corpus, *options)  # noqa: E731
    assert f"no file matches {d}/nothing*.jsonl" in bad([str(d / "nothing*.jsonl")])
    (d / "empty").mkdir()
    (d / "empty" / "notes.md").write_text("not a corpus file")
    assert f"folder {d / 'empty'} holds no corpus files" in bad([str(d / "empty")])
    good = json.dumps({"text": "fine"})
    cases = {
        "notjson.jsonl": (f"{good}\n{good}\n{{oops\n", "notjson.jsonl line 3 is not valid JSON"),
        "nofield.jsonl": (f'{good}\n{{"body": "x"}}\n', 'nofield.jsonl line 2: no "text" field'),
        "notstring.jsonl": (f'{good}\n\n{{"text": 7}}\n', 'notstring.jsonl line 3: the "text" field is a number'),
        "null.jsonl": (f'{{"text": null}}\n{good}\n', 'null.jsonl line 1: the "text" field is null'),
        "array.json": (f"[{good}, {good}]\n", "array.json line 1: not a JSON object"),
    }
    for name, (content, message) in cases.items():
        (d / name).write_text(content)
        assert message in bad([str(d / name)])
    (d / "bad.jsonl.gz").write_bytes(gzip.compress(b'{"text": "hello"}\n' * 500)[:-30])
    assert "bad.jsonl.gz is not a valid gzip file" in bad([str(d / "bad.jsonl.gz")])
    (d / "garbage.txt.gz").write_bytes(b"this is not gzip at all")
    assert "garbage.txt.gz is not a valid gzip file" in bad([str(d / "garbage.txt.gz")])
    (d / "cut.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "hello"}\n' * 5000)[:-20])
    assert "cut.jsonl.zst is not a valid zstd file" in bad([str(d / "cut.jsonl.zst")])
    (d / "garbage.txt.zst").write_bytes(b"this is not zstd at all")
    assert "garbage.txt.zst is not a valid zstd file" in bad([str(d / "garbage.txt.zst")])
    _write_parquet(d / "body.parquet", ["a", "b"], field="body")
    assert 'body.parquet has no column "text" (its columns: id, body)' in bad([str(d / "body.parquet")])
    pq.write_table(pa.table({"text": [1, 2]}), d / "numbers.parquet")
    assert 'numbers.parquet: column "text" holds int64, not strings' in bad([str(d / "numbers.parquet")])
    _write_parquet(d / "gap.parquet", ["a", "b", None])
    assert 'gap.parquet row 2: the "text" value is null' in bad([str(d / "gap.parquet")])
    (d / "ok.txt").write_text("hello")
    (d / "latin1.txt").write_bytes(b"hello caf\xe9 world")
    message = bad([str(d / "ok.txt"), str(d / "latin1.txt")])
    assert f"{d / 'latin1.txt'} is not UTF-8: invalid byte 0xe9 at byte 9" in message
    assert "--format must be one of txt, jsonl, parquet" in bad([str(d / "ok.txt")], "--format", "csv")
    assert "standard input (-) can be read only once" in bad(["-", "-"])
    (d / "blank.jsonl").write_text("\n\n")
    assert "the corpus is empty" in bad([str(d / "blank.jsonl")])


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch) -> None:
    _write_parquet(tmp_path / "docs.parquet", ["a"])
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(InputError, match=r'pip install "lmkit\[parquet\]"'):
        count_pretokens(tmp_path / "docs.parquet", [EOT])


@pytest.mark.parametrize("command", ["train", "encode"])
def test_pipes_devices_and_unreadable_files_are_refused(command, runner, tok_dir: Path, monkeypatch) -> None:
    d = tok_dir
    bad = lambda corpus: _bad(runner, d, command, corpus)  # noqa: E731
    os.mkfifo(d / "pipe.txt")
    assert f"corpus {d / 'pipe.txt'} is not a regular file" in bad([str(d / "pipe.txt")])
    assert "corpus /dev/zero is not a regular file" in bad(["/dev/zero"])
    (d / "folder").mkdir()
    (d / "folder" / "a.txt").write_text("hello")
    os.mkfifo(d / "folder" / "b.txt")
    assert f"corpus {d / 'folder' / 'b.txt'} is not a regular file" in bad([str(d / "folder")])
    (d / "folder" / "b.txt").unlink()
    (d / "folder" / "secret.txt").write_text("hidden from this user")
    real_open = open

    def without_permission(path, *args, **kwargs):  # as for a user without the right to read it (not root)
        if Path(path).name == "secret.txt":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("lmkit.tokenizer.sources.open", without_permission, raising=False)
    assert f"cannot read {d / 'folder' / 'secret.txt'}: Permission denied" in bad([str(d / "folder" / "secret.txt")])
    assert f"cannot read {d / 'folder' / 'secret.txt'}: Permission denied" in bad([str(d / "folder")])
