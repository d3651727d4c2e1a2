"""Helpers shared by the tests: CLI error checks, a tiny byte-level training run, a loss that turns NaN."""

from pathlib import Path

import numpy as np

import lmkit
import lmkit.training.loop
from lmkit.tokenizer.formats import save_tokenizer

SHAKESPEARE = Path(lmkit.__file__).parent / "data" / "tinyshakespeare.txt"


def assert_input_error(result, message: str) -> None:
    """The command exited 2 with one line on stderr, `error: ...`, containing `message`, and no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert " ".join(message.split()) in lines[0]
    assert "Traceback" not in result.output


def write_tiny_run(folder: Path, train_table: str, n_bytes: int = 30_000) -> Path:
    """Write folder/run.toml for a tiny model (1 layer, d_model 16, context 16) on byte-level tinyshakespeare.

    The tokenizer (256 byte tokens), train.npy (the first 5/6 of `n_bytes`) and val.npy go beside it;
    `train_table` is the body of the [train] table.
    """
    save_tokenizer(folder / "tokenizer.json", {i: bytes([i]) for i in range(256)}, [], [])
    ids = np.frombuffer(SHAKESPEARE.read_bytes()[:n_bytes], dtype=np.uint8).astype(np.uint16)
    split = n_bytes * 5 // 6
    np.save(folder / "train.npy", ids[:split])
    np.save(folder / "val.npy", ids[split:])
    path = folder / "run.toml"
    path.write_text(
        f'[data]\ntrain = "{folder / "train.npy"}"\nval = "{folder / "val.npy"}"\n'
        f'tokenizer = "{folder / "tokenizer.json"}"\n'
        "[model]\nvocab_size = 256\ncontext_length = 16\nd_model = 16\nnum_layers = 1\nnum_heads = 2\n"
        "[optim]\nlr = 1e-3\n"
        f"[train]\n{train_table}"
    )
    return path


def make_loss_nan_at_call(monkeypatch, call: int) -> None:
    """Make the training loop's loss NaN on its `call`-th computation (counted across runs in this test)."""
    real, calls = lmkit.training.loop.cross_entropy, []

    def loss_with_nan(logits, targets):
        calls.append(1)
        loss = real(logits, targets)
        return loss * float("nan") if len(calls) == call else loss

    monkeypatch.setattr(lmkit.training.loop, "cross_entropy", loss_with_nan)
