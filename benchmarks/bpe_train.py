"""Benchmark: BPE training, lmkit against HuggingFace tokenizers, side by side on the same machine.

Both run as whole processes (start-up, imports, reading, training; lmkit also writes its tokenizer.json).
For each we print the wall time and the peak memory of the process and all its children together (the
sum of their resident sets, sampled every 10 ms), then the ratios. Also checked: memory on the corpus
concatenated ten times, and the in-process time of a small corpus.

    python benchmarks/build_corpus.py /tmp/bench/corpus.txt
    python benchmarks/bpe_train.py /tmp/bench/corpus.txt [--vocab-size 10000] [--workers 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EOT = "<|endoftext|>"
SMALL_CORPUS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "corpus.en"


def _tree_rss_bytes(pid: int) -> int:
    """The resident memory of a process and all its descendants, from /proc (0 once it has exited)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    stack.extend(int(child) for child in children.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def measure(command: list[str]) -> tuple[float, float, str]:
    """Run a command; return (wall seconds, peak MB of its process tree, its stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_bytes(proc.pid))
        time.sleep(0.01)
    wall = time.perf_counter() - start
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(command)}")
    return wall, peak / 1e6, out.strip()


def lmkit_command(corpus: Path, vocab_size: int, workers: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "lmkit", "tokenizer", "train", str(corpus), "--vocab-size", str(vocab_size),
            "--special-token", EOT, "--workers", str(workers), "--out", str(out), "--json"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path, help="the benchmark corpus (build_corpus.sh)")
    parser.add_argument("--vocab-size", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each: best wall, worst peak")
    parser.add_argument("--bench-dir", type=Path, default=Path("/work/shared/bench"), help="the anchor scripts")
    parser.add_argument("--skip-10x", action="store_true", help="skip the ten-times corpus memory check")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.corpus.parent) as tmp:
        out = Path(tmp) / "tokenizer.json"
        hf = [sys.executable, str(args.bench_dir / "hf_bpe_train.py"), str(args.corpus), str(args.vocab_size)]
        lm = lmkit_command(args.corpus, args.vocab_size, args.workers, out)
        walls: dict[str, list[float]] = {"hf tokenizers": [], "lmkit": []}
        peaks: dict[str, list[float]] = {"hf tokenizers": [], "lmkit": []}
        print(f"corpus {args.corpus} ({args.corpus.stat().st_size / 1e6:.1f} MB), vocab {args.vocab_size}, "
              f"lmkit workers {args.workers}, {os.cpu_count()} cores")  # fmt: skip
        for round_ in range(args.rounds):
            for name, command in (("hf tokenizers", hf), ("lmkit", lm)):
                wall, peak, _ = measure(command)
                print(f"  round {round_ + 1} {name:14s} wall {wall:6.2f} s   peak memory {peak:7.1f} MB")
                walls[name].append(wall)
                peaks[name].append(peak)
        hf_wall, lm_wall = min(walls["hf tokenizers"]), min(walls["lmkit"])
        hf_peak, lm_peak = max(peaks["hf tokenizers"]), max(peaks["lmkit"])
        print(f"hf tokenizers: best wall {hf_wall:.2f} s, worst peak {hf_peak:.0f} MB")
        print(f"lmkit:         best wall {lm_wall:.2f} s, worst peak {lm_peak:.0f} MB")
        print(f"lmkit / hf wall time: {lm_wall / hf_wall:.2f}  (target <= 1.00)")
        print(f"lmkit peak memory, all processes: {lm_peak:.0f} MB  (target <= 1000 MB)")

        if not args.skip_10x:
            big = Path(tmp) / "corpus10x.txt"
            with open(big, "wb") as dst:
                for _ in range(10):
                    with open(args.corpus, "rb") as src:
                        shutil.copyfileobj(src, dst)
            wall, peak, _ = measure(lmkit_command(big, args.vocab_size, args.workers, out))
            print(f"10x corpus ({big.stat().st_size / 1e6:.0f} MB): lmkit wall {wall:.2f} s, peak {peak:.0f} MB, "
                  f"{peak / lm_peak:.2f}x the 1x run  (target <= 1.50)")  # fmt: skip

    from lmkit.tokenizer import train_bpe

    start = time.perf_counter()
    train_bpe(SMALL_CORPUS, 500, [EOT])
    print(f"corpus.en, vocab 500, in-process: {time.perf_counter() - start:.3f} s  (target < 0.5 s)")


if __name__ == "__main__":
    main()
