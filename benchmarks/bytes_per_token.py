"""Benchmark: bytes per token of each pre-token pattern, trained and measured on one corpus.

Usage: python benchmarks/bytes_per_token.py [CORPUS] [--vocab-sizes 10000 32000] [--patterns gpt2 gpt4 o200k llama3]

For each pattern and vocabulary size it trains a tokenizer on the corpus (with `<|endoftext|>` as the
special token, as `lmkit tokenizer train` does) and encodes the same corpus with it: more bytes per token
means shorter token sequences for the same text. Training is deterministic, so the figures are too.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from lmkit.tokenizer import Tokenizer
from lmkit.tokenizer.encode import encode_file
from lmkit.tokenizer.formats import Layout
from lmkit.tokenizer.pretokenize import PRESETS
from lmkit.tokenizer.train import train_bpe

EOT = "<|endoftext|>"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", type=Path, default=Path("/tmp/bench/corpus.txt"))
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[10_000, 32_000])
    parser.add_argument("--patterns", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--workers", type=int, default=None, help="Processes for training and encoding.")
    args = parser.parse_args()
    print(f"corpus {args.corpus}: {args.corpus.stat().st_size / 1e6:.1f} MB")
    print("| pattern | " + " | ".join(f"vocab {v:,}" for v in args.vocab_sizes) + " |")
    print("|---|" + "---|" * len(args.vocab_sizes))
    for pattern in args.patterns:
        cells = []
        for vocab_size in args.vocab_sizes:
            start = time.perf_counter()
            vocab, merges = train_bpe(args.corpus, vocab_size, [EOT], pattern=pattern, num_workers=args.workers)
            tokenizer = Tokenizer(vocab, merges, [EOT], Layout(pattern))
            with tempfile.TemporaryDirectory() as folder:
                summary = encode_file(
                    args.corpus, tokenizer, Path(folder) / "t.npy", workers=args.workers or 1, show_progress=False
                )
            cells.append(f"{summary['bytes/token']:.3f}")
            print(f"  ({pattern}, {vocab_size}: {time.perf_counter() - start:.0f} s)", flush=True)
        print(f"| {pattern} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
