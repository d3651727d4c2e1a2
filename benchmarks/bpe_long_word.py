"""Benchmark: BPE training on text that is one long word, lmkit against HuggingFace tokenizers, side by side.

A corpus of N random lowercase letters with no space is a single pre-token. Merging inside it must stay
near-linear in its length (lmkit indexes pair positions in long words); this prints both tools' wall time
and peak memory for each size, and the ratio.

    python benchmarks/bpe_long_word.py [--sizes 100000,1000000] [--vocab-size 10000]
"""

from __future__ import annotations

import argparse
import random
import string
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bpe_train import lmkit_command, measure  # noqa: E402


def write_one_word(path: Path, size: int, seed: int = 0) -> None:
    """`size` random lowercase letters, no whitespace: one pre-token."""
    rng = random.Random(seed)
    path.write_text("".join(rng.choices(string.ascii_lowercase, k=size)), encoding="ascii")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated word lengths in bytes")
    parser.add_argument("--vocab-size", type=int, default=10000)
    parser.add_argument("--bench-dir", type=Path, default=Path("/work/shared/bench"), help="the anchor scripts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus, out = Path(tmp) / "word.txt", Path(tmp) / "tokenizer.json"
        for size in map(int, args.sizes.split(",")):
            write_one_word(corpus, size)
            hf = [sys.executable, str(args.bench_dir / "hf_bpe_train.py"), str(corpus), str(args.vocab_size)]
            hf_wall, hf_peak, _ = measure(hf)
            lm_wall, lm_peak, _ = measure(lmkit_command(corpus, args.vocab_size, 1, out))
            print(f"one word of {size:,} bytes, vocab {args.vocab_size}:")
            print(f"  hf tokenizers wall {hf_wall:7.2f} s   peak memory {hf_peak:7.1f} MB")
            print(f"  lmkit         wall {lm_wall:7.2f} s   peak memory {lm_peak:7.1f} MB")
            print(f"  lmkit / hf wall time: {lm_wall / hf_wall:.2f}")


if __name__ == "__main__":
    main()
