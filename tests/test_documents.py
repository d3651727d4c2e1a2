"""Document-aware data: the layout of documents in a row, the masked model, best-fit packing, and training
with train.batching = "documents" and train.document_mask."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_input_error
from typer.testing import CliRunner

import lmkit
from lmkit.cli.app import app
from lmkit.model import Documents, ModelConfig, TransformerLM
from lmkit.tokenizer import Tokenizer
from lmkit.tokenizer.formats import save_tokenizer
from lmkit.training.packing import DocumentPacker

pytestmark = pytest.mark.usefixtures("one_thread")

EOT = 256  # the separator in these tests: a byte tokenizer's first special token
SHAKESPEARE = Path(lmkit.__file__).parent / "data" / "tinyshakespeare.txt"


def test_the_layout_numbers_each_document_from_zero_and_keeps_attention_inside_it():
    row = torch.tensor([[7, 8, EOT, 9, EOT, 4, 5]])
    layout = Documents.from_ids(row, EOT)
    assert layout.positions.tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    documents = [0, 0, 0, 1, 1, 2, 2]  # a separator belongs to the document it ends
    expected = [[documents[q] == documents[k] and k <= q for k in range(7)] for q in range(7)]
    assert layout.mask[0, 0].tolist() == expected


@pytest.mark.parametrize("shape", [{}, {"num_kv_heads": 2}, {"norm": "post"}], ids=["mha", "gqa", "post-norm"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "written-out"])
def test_a_masked_row_reads_each_document_as_if_it_stood_alone(shape, fused):
    config = ModelConfig(vocab_size=300, context_length=32, d_model=32, num_layers=2, num_heads=4, **shape)
    torch.manual_seed(0)
    model = TransformerLM(config, fused=fused).eval()
    one = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        # One document (no separator): exactly the unmasked model.
        assert torch.equal(model(one, documents=Documents.from_ids(one, EOT)), model(one))
        first, second = torch.tensor([[3, 4, 5, 6, EOT]]), torch.randint(0, 256, (1, 11))
        row = torch.cat([first, second], dim=1)
        packed = model(row, documents=Documents.from_ids(row, EOT))
        torch.testing.assert_close(packed[:, 5:], model(second), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed[:, :5], model(first), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(row)[:, 5:], model(second), atol=1e-3)  # unmasked, it reads across


def documents_array(lengths: list[int]) -> np.ndarray:
    """Documents of the given lengths (separator included), document i's text tokens all equal to i % 200."""
    return np.concatenate([np.append(np.full(n - 1, i % 200), EOT) for i, n in enumerate(lengths)]).astype(np.uint16)


def test_packing_starts_every_row_at_a_document_and_crops_only_row_ends():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 40, 300).tolist() + [100, 150]  # two longer than a row
    tokens = documents_array(lengths)
    packer = DocumentPacker(tokens, EOT, context_length=32)
    batch = packer.draw(16, torch.Generator().manual_seed(3))
    assert batch.shape == (16, 33)
    for row in batch.tolist():
        pieces = np.split(np.array(row), np.flatnonzero(np.array(row) == EOT) + 1)
        for piece in pieces[:-1]:  # whole documents: one label, then the separator, at the document's length
            assert len(set(piece[:-1].tolist())) <= 1 and len(piece) in {n for n in lengths}
        if len(pieces[-1]):  # the cropped end: the start of a document longer than what was left
            label = pieces[-1][0]
            assert (pieces[-1] == label).all() and any(n - 1 > len(pieces[-1]) for n in lengths)
    assert packer.kept == 16 * 33 and 0 <= packer.dropped_fraction < 1
    again = DocumentPacker(tokens, EOT, context_length=32).draw(16, torch.Generator().manual_seed(3))
    assert torch.equal(batch, again)  # a batch depends only on the generator


def test_best_fit_takes_the_largest_document_that_fits():
    tokens = documents_array([5, 9, 4, 30])
    packer = DocumentPacker(tokens, EOT, context_length=12)  # rows of 13
    for seed in range(20):
        for row in packer.draw(4, torch.Generator().manual_seed(seed)).tolist():
            first = row.index(EOT) + 1
            # After the first document, the next is the largest that fits what is left (or a crop if none).
            left = 13 - first
            fitting = [n for n in (5, 9, 4) if n <= left]
            if fitting and EOT in row[first:]:
                assert row[first:].index(EOT) + 1 <= max(fitting)


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """Tiny Shakespeare's speeches as documents ending in <|endoftext|> (id 256), byte tokens, split 90/10."""
    Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"]).save(tmp_path / "tokenizer.json")
    speeches = SHAKESPEARE.read_bytes()[:300_000].split(b"\n\n")
    ids = np.concatenate([np.append(np.frombuffer(s, dtype=np.uint8), EOT) for s in speeches]).astype(np.uint16)
    split = len(ids) * 9 // 10
    np.save(tmp_path / "train.npy", ids[:split])
    np.save(tmp_path / "val.npy", ids[split:])
    return tmp_path


def write_run(folder: Path, name: str, **train: object) -> Path:
    tables = {
        "data": {"train": str(folder / "train.npy"), "val": str(folder / "val.npy"),
                 "tokenizer": str(folder / "tokenizer.json")},
        "model": {"vocab_size": 257, "context_length": 32, "d_model": 32, "num_layers": 1, "num_heads": 2},
        "optim": {"lr": 3e-3},
        "train": {"batch_size": 4, "steps": 8, "eval_every": 4, "eval_batches": 1, "log_every": 2,
                  "out_dir": str(folder / name), "device": "cpu", **train},
    }  # fmt: skip
    path = folder / f"{name}.toml"
    path.write_text(
        "".join(f"[{t}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in f.items()) for t, f in tables.items())
    )
    return path


def records(out: Path, event: str) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["event"] == event]


def test_training_on_packed_masked_documents_logs_the_dropped_share_and_resumes_exactly(run_folder):
    runner = CliRunner()
    settings = {"batching": "documents", "document_mask": True}
    straight = write_run(run_folder, "straight", **settings)
    done = runner.invoke(app, ["train", "-q", "--config", str(straight)])
    assert done.exit_code == 0, done.output
    broken = write_run(run_folder, "broken", **settings)
    assert runner.invoke(app, ["train", "-q", "--config", str(broken), "--until-step", "3"]).exit_code == 0
    assert runner.invoke(app, ["train", "-q", "--resume", str(run_folder / "broken")]).exit_code == 0
    losses = [[r["loss"] for r in records(run_folder / run, "train")] for run in ("straight", "broken")]
    assert losses[0] == losses[1] and len(losses[0]) == 4
    assert all(0 <= r["dropped_fraction"] < 1 for r in records(run_folder / "straight", "train"))
    plain = write_run(run_folder, "plain")
    assert runner.invoke(app, ["train", "-q", "--config", str(plain)]).exit_code == 0
    assert "dropped_fraction" not in records(run_folder / "plain", "train")[0]
    assert [r["val_loss"] for r in records(run_folder / "plain", "eval")] != [
        r["val_loss"] for r in records(run_folder / "straight", "eval")
    ]


def test_document_settings_that_cannot_work_are_refused(run_folder):
    runner = CliRunner()
    config = write_run(run_folder, "r", batching="docs")
    assert_input_error(runner.invoke(app, ["train", "--config", str(config)]), "train.batching: Input should be")
    save_tokenizer(run_folder / "tokenizer.json", {i: bytes([i]) for i in range(256)}, [], [])
    for split in ("train", "val"):  # no separator in the data either: only the tokenizer is at fault
        np.save(run_folder / f"{split}.npy", np.arange(3000, dtype=np.uint16) % 256)
    config = write_run(run_folder, "r", document_mask=True)
    assert_input_error(runner.invoke(app, ["train", "--config", str(config)]), "need a tokenizer with a special token")
    Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"]).save(run_folder / "tokenizer.json")
    np.save(run_folder / "train.npy", np.arange(200, dtype=np.uint16) % 256)
    config = write_run(run_folder, "r", batching="documents")
    assert_input_error(
        runner.invoke(app, ["train", "--config", str(config)]), 'train.batching = "documents" needs documents'
    )
    assert not (run_folder / "r" / "last.pt").exists()


def test_eval_with_the_document_mask_predicts_each_token_from_its_own_document(tmp_path):
    from lmkit.evaluation import evaluate

    tokenizer = Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])
    config = ModelConfig(vocab_size=257, context_length=64, d_model=32, num_layers=2, num_heads=4)
    torch.manual_seed(1)
    model = TransformerLM(config).eval()
    first, second = list(b"Hello there."), list(b"Another one!")
    np.save(tmp_path / "d.npy", np.array([*first, EOT, *second], dtype=np.uint16))

    def nats(context: list[int], targets: list[int]) -> float:
        """-ln p of each target from the model run on `context` alone (one target per position)."""
        with torch.no_grad():
            logits = model(torch.tensor([context]))[0]
        return torch.nn.functional.cross_entropy(logits, torch.tensor(targets), reduction="sum").item()

    # The stream starts with <|endoftext|> (a document of its own), then the two documents.
    expected = nats([EOT], [first[0]]) + nats([*first, EOT], [*first[1:], EOT, second[0]])
    expected += nats(second[:-1], second[1:])
    masked = evaluate(model, tokenizer, tmp_path / "d.npy", document_mask=True)
    assert masked.tokens == len(first) + 1 + len(second)
    assert masked.total_nats == pytest.approx(expected, abs=1e-4)
    # Unmasked, tokens read across the separator (a random model: the difference is small, but there).
    assert abs(evaluate(model, tokenizer, tmp_path / "d.npy").total_nats - expected) > 1e-3
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "none.pt"), str(tmp_path / "d.npy"), "--document-mask"])
    assert_input_error(result, "does not exist")
    bare = Tokenizer({i: bytes([i]) for i in range(256)}, [], [])
    with pytest.raises(lmkit.errors.InputError, match="--document-mask needs a tokenizer with a special token"):
        evaluate(model, bare, tmp_path / "d.npy", document_mask=True)
