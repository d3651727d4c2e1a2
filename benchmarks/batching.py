"""Random windows vs document-aligned rows vs document rows with attention masked per document.

Usage: python benchmarks/batching.py [--corpus /tmp/bench/corpus.txt] [--seeds 3] [--steps 400] [--threads 1]

The corpus is documents joined by <|endoftext|>; it is encoded byte-level (ids 0-255 for bytes, 256 for the
separator, which ends each document), the last 5% of documents held out for validation. For each seed, the
same small model (vocab 257, context 128, d_model 64, 2 layers, 4 heads) trains for the same number of steps,
so on the same number of tokens, three ways:

    random       train.batching = "random"      (uniform windows, the default)
    documents    train.batching = "documents"   (rows start at a document, best-fit packing)
    doc+mask     "documents" and train.document_mask = true

Each trained model (last.pt) is then scored on the same fixed validation windows (the run's own: evenly spaced
windows, most starting mid-document) twice: plainly, and with attention and positions kept inside each document.
Printed per arm: the mean and spread over seeds of both validation losses and their bits per byte (the separator
counts 0 bytes), the dropped fraction of document tokens, and training tokens/s (median over logged steps).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from lmkit.checkpoint import load_model_and_tokenizer
from lmkit.model.documents import Documents
from lmkit.tokenizer.formats import save_tokenizer
from lmkit.training.data import validation_batches
from lmkit.training.loss import cross_entropy
from lmkit.training.packing import DocumentPacker

SEPARATOR = 256
CONTEXT, BATCH, EVAL_BATCHES = 128, 16, 40
MODEL = {"vocab_size": 257, "context_length": CONTEXT, "d_model": 64, "num_layers": 2, "num_heads": 4}
ARMS = {
    "random": {"batching": "random"},
    "documents": {"batching": "documents"},
    "doc+mask": {"batching": "documents", "document_mask": True},
}


def _encode(corpus: Path, folder: Path) -> None:
    """Byte-level train.npy / val.npy (each document followed by the separator) and the tokenizer."""
    documents = [doc for doc in corpus.read_bytes().split(b"<|endoftext|>") if doc]
    held_out = len(documents) * 95 // 100
    for name, part in (("train", documents[:held_out]), ("val", documents[held_out:])):
        ids = np.concatenate(
            [np.append(np.frombuffer(doc, dtype=np.uint8).astype(np.uint16), SEPARATOR) for doc in part]
        )
        np.save(folder / f"{name}.npy", ids)
    vocab = {i: bytes([i]) for i in range(256)} | {SEPARATOR: b"<|endoftext|>"}
    save_tokenizer(folder / "tokenizer.json", vocab, [], ["<|endoftext|>"])


def _train(folder: Path, arm: str, seed: int, steps: int, env: dict[str, str]) -> Path:
    out = folder / f"{arm}-{seed}"
    train = {"batch_size": BATCH, "steps": steps, "seed": seed, "device": "cpu", "log_every": 10,
             "eval_every": steps, "eval_batches": EVAL_BATCHES, "ckpt_every": steps, "out_dir": str(out),
             **ARMS[arm]}  # fmt: skip
    tables = {
        "data": {"train": str(folder / "train.npy"), "val": str(folder / "val.npy"),
                 "tokenizer": str(folder / "tokenizer.json")},
        "model": MODEL, "optim": {"lr": 3e-3, "warmup_steps": steps // 10}, "train": train,
    }  # fmt: skip
    text = "".join(
        f"[{name}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in fields.items())
        for name, fields in tables.items()
    )
    config = folder / f"{arm}-{seed}.toml"
    config.write_text(text)
    command = [sys.executable, "-m", "lmkit", "train", "--quiet", "--config", str(config)]
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return out


@torch.no_grad()
def _val_losses(run: Path, windows: list[torch.Tensor]) -> tuple[float, float]:
    """Mean validation loss of the run's last.pt over `windows`: plain, and with documents kept apart."""
    model, _ = load_model_and_tokenizer(run / "last.pt", device="cpu")
    plain = masked = 0.0
    for window in windows:
        inputs, targets = window[:, :-1], window[:, 1:]
        plain += cross_entropy(model(inputs), targets).item()
        masked += cross_entropy(model(inputs, documents=Documents.from_ids(inputs, SEPARATOR)), targets).item()
    return plain / len(windows), masked / len(windows)


def _to_bpb(windows: list[torch.Tensor]) -> float:
    """The factor from nats per token to bits per byte on `windows` (the separator counts 0 bytes)."""
    targets = torch.cat([w[:, 1:] for w in windows])
    return targets.numel() / ((targets != SEPARATOR).sum().item() * math.log(2))


def _summary(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/bench/corpus.txt"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _encode(args.corpus, folder)
        val = np.load(folder / "val.npy")
        packer = DocumentPacker(val, SEPARATOR, CONTEXT)
        lengths, long_share = packer.lengths, packer.lengths[packer.lengths > CONTEXT + 1].sum() / len(val)
        print(f"val documents: {len(lengths):,}, median {int(np.median(lengths))} tokens, mean "
              f"{lengths.mean():.0f}; {long_share:.0%} of tokens in documents longer than a row")  # fmt: skip
        # Two fixed validation sets: the run's own windows (evenly spaced, token-weighted, mostly mid-document)
        # and rows packed from validation documents as "documents" training packs them (fixed generator).
        generator = torch.Generator().manual_seed(0)
        scorings = {
            "windows": validation_batches(val, BATCH, CONTEXT, EVAL_BATCHES),
            "doc rows": [packer.draw(BATCH, generator) for _ in range(EVAL_BATCHES)],
        }
        print(f"{args.steps} steps x {BATCH} x {CONTEXT} = {args.steps * BATCH * CONTEXT:,} tokens per run; "
              f"seeds 0..{args.seeds - 1}; each validation set {BATCH * EVAL_BATCHES} rows of {CONTEXT}")  # fmt: skip
        print(f"{'arm':<10} {'val set':<9} {'loss plain':>16} {'bpb plain':>16} {'loss masked':>16} {'bpb masked':>16} "
              f"{'dropped':>8} {'tokens/s':>9}")  # fmt: skip
        for arm in ARMS:
            scores, rates, dropped = {name: ([], []) for name in scorings}, [], []
            for seed in range(args.seeds):
                run = _train(folder, arm, seed, args.steps, env)
                lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
                train_lines = [line for line in lines if line["event"] == "train"]
                rates.append(statistics.median(line["tokens_per_s"] for line in train_lines[1:]))
                dropped.append(train_lines[-1].get("dropped_fraction", 0.0))
                for name, windows in scorings.items():
                    plain, masked = _val_losses(run, windows)
                    scores[name][0].append(plain)
                    scores[name][1].append(masked)
            for name, (plain, masked) in scores.items():
                factor = _to_bpb(scorings[name])
                print(
                    f"{arm:<10} {name:<9} {_summary(plain):>16} {_summary([v * factor for v in plain]):>16} "
                    f"{_summary(masked):>16} {_summary([v * factor for v in masked]):>16} "
                    f"{statistics.mean(dropped):>8.3f} {statistics.median(rates):>9.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
