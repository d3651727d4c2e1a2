"""The whole `lmkit train` loop (data, step, logging) vs the plain-PyTorch anchor, at the TinyStories shape.

Usage: python benchmarks/train_loop.py [--batch 8] [--rounds 2] [--threads N] [--anchor-dir /work/shared/bench]

Each round runs the anchor (`ref_model.py BATCH`: forward, loss, backward, torch.optim.AdamW on a fixed
batch, median of 5 steps) and then `lmkit train` in a fresh process on random token data at the same
shape (vocab 10000, context 256, d_model 512, 4 layers, 16 heads, d_ff 1344): lmkit's figure is the
median wall-clock interval between consecutive steps in metrics.jsonl, so it includes drawing batches
from a memory-mapped file, the optimizer, clipping and logging. Prints both and the ratio (>= 1.0 means
lmkit is at least as fast). The machines are noisy: the rounds alternate, compare within a round.
`--threads N` sets OMP_NUM_THREADS for both (on a busy machine, 1 thread each is the steadiest comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from anchors import ref_model_tokens_per_s

from lmkit.tokenizer.formats import save_tokenizer

SHAPE = {"vocab_size": 10000, "context_length": 256, "d_model": 512, "num_layers": 4, "num_heads": 16, "d_ff": 1344}
STEPS, WARMUP = 12, 3


def _write_run(folder: Path, batch: int) -> Path:
    rng = np.random.default_rng(0)
    # Ids the byte-level tokenizer below defines (a run refuses data its tokenizer cannot decode); the model
    # keeps the full 10,000-id vocabulary, so the step's cost is the TinyStories shape's.
    np.save(folder / "train.npy", rng.integers(0, 256, 2_000_000, dtype=np.uint16))
    np.save(folder / "val.npy", rng.integers(0, 256, 100_000, dtype=np.uint16))
    save_tokenizer(folder / "tokenizer.json", {i: bytes([i]) for i in range(256)}, [], [])
    model = "\n".join(f"{key} = {value}" for key, value in SHAPE.items())
    config = folder / "run.toml"
    config.write_text(
        f'[data]\ntrain = "{folder / "train.npy"}"\nval = "{folder / "val.npy"}"\n'
        f'tokenizer = "{folder / "tokenizer.json"}"\n[model]\n{model}\n[optim]\nlr = 1e-3\n'
        f'[train]\nbatch_size = {batch}\nsteps = {STEPS}\ndevice = "cpu"\nlog_every = 1\n'
        f"eval_every = {STEPS}\neval_batches = 1\nckpt_every = {STEPS}\n"
    )
    return config


def _lmkit_tokens_per_s(config: Path, out_dir: Path, batch: int, env: dict[str, str]) -> float:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lmkit",
            "train",
            "--quiet",
            "--config",
            str(config),
            "--set",
            f'train.out_dir="{out_dir}"',
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["time_s"] for r in lines if r["event"] == "train"]
    # Intervals between steps WARMUP..STEPS-1: the last step also evaluates and saves checkpoints.
    intervals = [b - a for a, b in zip(times[WARMUP - 1 : -2], times[WARMUP:-1], strict=True)]
    return batch * SHAPE["context_length"] / statistics.median(intervals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for both (default: unset)")
    parser.add_argument("--anchor-dir", type=Path, default=Path("/work/shared/bench"))
    args = parser.parse_args()
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        config = _write_run(Path(tmp), args.batch)
        for round_index in range(args.rounds):
            anchor = ref_model_tokens_per_s(args.anchor_dir, args.batch, env)
            ours = _lmkit_tokens_per_s(config, Path(tmp) / f"out{round_index}", args.batch, env)
            ratios.append(ours / anchor)
            print(
                f"round {round_index + 1}: anchor ref_model.py {anchor:,.0f} tokens/s | "
                f"lmkit train loop {ours:,.0f} tokens/s | ratio {ours / anchor:.2f}"
            )
    threads = args.threads or "default"
    ratio = statistics.median(ratios)
    print(f"batch {args.batch}, context 256, threads {threads}: lmkit / anchor = {ratio:.2f} (median of rounds)")


if __name__ == "__main__":
    main()
