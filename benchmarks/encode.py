"""Benchmark: encoding a corpus with the GPT-2 vocabulary, lmkit against tiktoken, side by side.

Usage: python benchmarks/encode.py [CORPUS] [--workers 1 2] [--rounds 2] [--anchors /work/shared/bench]
       [--patterns gpt2 gpt4 o200k]

Each round runs the anchor (`tiktoken_encode.py`: tiktoken, one thread, which also saves its ids beside the
corpus) and then `encode_file` (what `lmkit tokenizer encode` runs) once per worker count, each with a fresh
tokenizer so its cache starts empty. It prints MB/s, the ratio to tiktoken in the same round, and whether
lmkit's .npy holds exactly tiktoken's ids. Each round first measures how much more work two busy processes
get done than one at that moment: on a shared machine whose cores are taken that is near 1.0x, and then
`--workers 2` cannot show a speedup. Build the corpus with `bash build_corpus.sh CORPUS` first.

The gpt4 and o200k rows cut the text with cl100k_base's and o200k_base's patterns over the same GPT-2
vocabulary (the same size class), against a tiktoken `Encoding` built in this process from the same ranks
and pattern; its time is that of `encode` alone, like the anchor's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lmkit.tokenizer import Tokenizer
from lmkit.tokenizer.encode import encode_file
from lmkit.tokenizer.formats import Layout
from lmkit.tokenizer.pretokenize import PRESETS

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def tiktoken_mb_per_s(anchors: Path, corpus: Path) -> float:
    """Run the anchor script and read the MB/s it prints."""
    out = subprocess.run(
        [sys.executable, str(anchors / "tiktoken_encode.py"), str(corpus), str(FIXTURES / "gpt2_vocab.json")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(re.search(r"([\d.]+) MB/s", out).group(1))


def tiktoken_pattern_run(base: Tokenizer, corpus: Path, pattern: str) -> tuple[float, np.ndarray]:
    """tiktoken with the GPT-2 ranks and a preset's pattern, one thread: MB/s of `encode` and its ids."""
    import tiktoken

    eot = base.special_ids["<|endoftext|>"]
    ranks = {token: i for i, token in base.vocab.items() if i != eot}
    encoding = tiktoken.Encoding(
        f"gpt2-{pattern}", pat_str=PRESETS[pattern], mergeable_ranks=ranks, special_tokens={"<|endoftext|>": eot}
    )
    text = corpus.read_bytes().decode("utf-8")
    start = time.perf_counter()
    ids = encoding.encode(text, allowed_special={"<|endoftext|>"})
    elapsed = time.perf_counter() - start
    return corpus.stat().st_size / elapsed / 1e6, np.asarray(ids, dtype=np.uint16)


def lmkit_mb_per_s(
    base: Tokenizer, corpus: Path, workers: int, reference: np.ndarray, pattern: str = "gpt2"
) -> tuple[float, bool]:
    """Encode the corpus with `workers` processes; return MB/s and whether the ids equal `reference`."""
    tokenizer = Tokenizer(base.vocab, base.merges, base.special_tokens, Layout(pattern))  # a cold cache
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "tokens.npy"
        summary = encode_file(corpus, tokenizer, out, workers=workers, show_progress=False)
        same = np.array_equal(np.load(out, mmap_mode="r"), reference)
    return summary["MB/s"], same


def _spin(_: int) -> None:
    total = 0
    for i in range(5_000_000):
        total += i


def parallel_speedup(processes: int) -> float:
    """How much more work `processes` busy processes get done than one, right now (2.0 on an idle 2-core box).

    On a shared machine the kernel splits the cores between sessions, so extra workers may gain nothing.
    """
    wall = []
    for n in (1, processes):
        with multiprocessing.Pool(n) as pool:
            start = time.perf_counter()
            pool.map(_spin, range(n))
            wall.append(time.perf_counter() - start)
    return processes * wall[0] / wall[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", type=Path, default=Path("/tmp/bench/corpus.txt"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--anchors", type=Path, default=Path("/work/shared/bench"))
    parser.add_argument("--patterns", nargs="+", default=["gpt2", "gpt4", "o200k"], choices=["gpt2", "gpt4", "o200k"])
    args = parser.parse_args()
    base = Tokenizer.from_files(FIXTURES / "gpt2_vocab.json", FIXTURES / "gpt2_merges.txt", ["<|endoftext|>"])
    size = args.corpus.stat().st_size
    print(f"corpus {args.corpus}: {size / 1e6:.1f} MB; GPT-2 vocabulary; MB/s of the whole file, cold cache")
    ratios: dict[tuple[str, int], list[float]] = {(p, w): [] for p in args.patterns for w in args.workers}
    anchor_runs: dict[str, list[float]] = {p: [] for p in args.patterns}
    for round_index in range(args.rounds):
        speedup = parallel_speedup(max(args.workers))
        print(f"round {round_index + 1}: {max(args.workers)} processes get {speedup:.2f}x the work of 1", flush=True)
        for pattern in args.patterns:
            if pattern == "gpt2":
                anchor = tiktoken_mb_per_s(args.anchors, args.corpus)
                reference = np.load(f"{args.corpus}.tiktoken.npy")
            else:
                anchor, reference = tiktoken_pattern_run(base, args.corpus, pattern)
            anchor_runs[pattern].append(anchor)
            line = [f"  {pattern}: tiktoken {anchor:.2f} MB/s"]
            for workers in args.workers:
                speed, same = lmkit_mb_per_s(base, args.corpus, workers, reference, pattern)
                ratios[pattern, workers].append(speed / anchor)
                line.append(
                    f"lmkit --workers {workers} {speed:.2f} MB/s ({speed / anchor:.2f}x, ids identical: {same})"
                )
            print(" | ".join(line), flush=True)
    for pattern in args.patterns:
        print(f"{pattern}: median tiktoken {statistics.median(anchor_runs[pattern]):.2f} MB/s", end="")
        for workers in args.workers:
            print(f" | lmkit --workers {workers}: {statistics.median(ratios[pattern, workers]):.2f}x", end="")
        print()


if __name__ == "__main__":
    main()
