"""Benchmark: training and encoding a corpus as one .txt, as many small files, and as one .jsonl.zst, side by side.

The benchmark corpus is cut at its `<|endoftext|>` separators into documents, written (in a temporary folder
beside it) as `--files` small .txt files (runs of documents; the separators between files are left out,
since reading them puts the separator back) and as one .jsonl.zst with one record per document. All three
hold exactly the same text, so the tokenizers and token arrays must be byte for byte the same; the script
checks that and prints each layout's time and its ratio to the .txt in the same round (target <= 1.2x).
On a machine shared with other jobs the wall time swings with their load, so the CPU time of all the
processes involved (main process and workers) is printed beside it: it measures the work each layout costs.

Training runs whole processes (`lmkit tokenizer train`, as `bpe_train.py` does); encoding runs `encode_file`
(what `lmkit tokenizer encode` runs) with the GPT-2 vocabulary and a fresh tokenizer each time.

    python benchmarks/build_corpus.py /tmp/bench/corpus.txt
    python benchmarks/corpus_formats.py /tmp/bench/corpus.txt [--files 2000] [--workers 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zstandard

from lmkit.tokenizer import Tokenizer
from lmkit.tokenizer.encode import encode_file

EOT = "<|endoftext|>"
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def write_layouts(corpus: Path, folder: Path, files: int) -> dict[str, Path]:
    """Write the corpus as many small files and as one .jsonl.zst; return each layout's path."""
    documents = corpus.read_text(encoding="utf-8").split(EOT)
    shards = folder / "shards"
    shards.mkdir()
    per_file = len(documents) / files
    for i in range(files):
        part = documents[round(i * per_file) : round((i + 1) * per_file)]
        (shards / f"{i // 100:03d}" / f"{i:05d}.txt").parent.mkdir(exist_ok=True)
        (shards / f"{i // 100:03d}" / f"{i:05d}.txt").write_text(EOT.join(part), encoding="utf-8")
    lines = "".join(json.dumps({"text": doc}) + "\n" for doc in documents).encode("utf-8")
    jsonl = folder / "corpus.jsonl.zst"
    jsonl.write_bytes(zstandard.ZstdCompressor(level=3).compress(lines))
    return {".txt": corpus, f"{files} files": shards, ".jsonl.zst": jsonl}


def _cpu_seconds() -> float:
    """CPU time of this process and of every finished child (and their children, once waited for)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def train_seconds(inputs: Path, out: Path, vocab_size: int, workers: int) -> tuple[float, float]:
    """Wall and CPU time of a whole `lmkit tokenizer train` process (its workers included)."""
    command = [sys.executable, "-m", "lmkit", "tokenizer", "train", str(inputs), "--vocab-size", str(vocab_size),
               "--special-token", EOT, "--workers", str(workers), "--out", str(out), "--json"]  # fmt: skip
    start, cpu = time.perf_counter(), _cpu_seconds()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, _cpu_seconds() - cpu


def encode_seconds(base: Tokenizer, inputs: Path, out: Path, workers: int) -> tuple[float, float]:
    """Wall and CPU time (workers included) of `encode_file` with a cold tokenizer cache."""
    tokenizer = Tokenizer(base.vocab, base.merges, base.special_tokens)
    start, cpu = time.perf_counter(), _cpu_seconds()
    encode_file(inputs, tokenizer, out, workers=workers, show_progress=False)
    return time.perf_counter() - start, _cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path, help="the benchmark corpus (build_corpus.sh)")
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    base = Tokenizer.from_files(FIXTURES / "gpt2_vocab.json", FIXTURES / "gpt2_merges.txt", [EOT])
    with tempfile.TemporaryDirectory(dir=args.corpus.parent) as tmp:
        folder = Path(tmp)
        layouts = write_layouts(args.corpus, folder, args.files)
        files = {name: path for name, path in layouts.items() if path.is_file()}
        sizes = ", ".join(f"{name} {path.stat().st_size / 1e6:.1f} MB" for name, path in files.items())
        print(f"corpus {args.corpus}: {sizes}; {args.files} files; workers {args.workers}, vocab {args.vocab_size}")
        walls: dict[str, dict[str, list[float]]] = {job: {name: [] for name in layouts} for job in ("train", "encode")}
        cpu_ratios: dict[str, dict[str, list[float]]] = {job: {name: [] for name in layouts} for job in walls}
        for round_index in range(args.rounds):
            for job in ("train", "encode"):
                seconds = {}
                for i, (name, path) in enumerate(layouts.items()):
                    if job == "train":
                        seconds[name] = train_seconds(path, folder / f"tok{i}.json", args.vocab_size, args.workers)
                    else:
                        seconds[name] = encode_seconds(base, path, folder / f"tokens{i}.npy", args.workers)
                line = [f"round {round_index + 1} {job:6s}"]
                (txt_wall, txt_cpu) = seconds[".txt"]
                for name, (wall, cpu) in seconds.items():
                    walls[job][name].append(wall)
                    cpu_ratios[job][name].append(cpu / txt_cpu)
                    ratios = f"({wall / txt_wall:.2f}x), cpu {cpu:6.2f} s ({cpu / txt_cpu:.2f}x)"
                    line.append(f"{name} wall {wall:6.2f} s {ratios}")
                print(" | ".join(line), flush=True)
        count = len(layouts)
        first_tok = (folder / "tok0.json").read_bytes()
        same_tok = all((folder / f"tok{i}.json").read_bytes() == first_tok for i in range(count))
        reference = np.load(folder / "tokens0.npy")
        same_ids = all(np.array_equal(np.load(folder / f"tokens{i}.npy"), reference) for i in range(count))
    print(f"identical outputs: tokenizer.json {same_tok}, token arrays {same_ids}")
    for job, by_layout in walls.items():
        txt_best = min(by_layout[".txt"])
        best = ", ".join(f"{name} {min(v) / txt_best:.2f}x" for name, v in by_layout.items() if name != ".txt")
        cpu = ", ".join(f"{n} {statistics.median(v):.2f}x" for n, v in cpu_ratios[job].items() if n != ".txt")
        print(f"{job}: best wall time / .txt's best: {best}; median CPU time / .txt: {cpu}  (target <= 1.20x)")


if __name__ == "__main__":
    main()
