"""Start-up: from the command to the first token of `lmkit generate`, against a bare `import torch`, in one run.

A checkpoint of the quickstart's model (a 2,000-token tokenizer trained on the first 200 KB of Tiny
Shakespeare; 4 layers, d_model 128, context 128; random weights) is written to a temporary folder. Each round
runs, as separate processes and alternating:
- torch:    python -c "import torch"
- generate: python -m lmkit generate CKPT --prompt ROMEO: --max-new-tokens 1 --device cpu --threads 1
- help:     python -m lmkit --help (a command that needs no torch)
The median wall time of each is printed, and lmkit's own start-up: generate's median minus torch's.
`--threads 1` keeps the thread choice (which looks at the CPUs' load) out of the figure; the last line
times the automatic choice alone.

    python benchmarks/startup.py --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lmkit
from lmkit.checkpoint import save_checkpoint
from lmkit.model import ModelConfig, TransformerLM
from lmkit.quickstart import MODEL
from lmkit.threads import choose_threads
from lmkit.tokenizer import Tokenizer, train_bpe

SHAKESPEARE = Path(lmkit.__file__).parent / "data" / "tinyshakespeare.txt"


def write_checkpoint(folder: Path) -> Path:
    """The quickstart-shaped checkpoint the generate command reads."""
    corpus = folder / "corpus.txt"
    corpus.write_bytes(SHAKESPEARE.read_bytes()[:200_000])
    vocab, merges = train_bpe(corpus, 2000, ["<|endoftext|>"])
    tokenizer = Tokenizer(vocab, merges, ["<|endoftext|>"])
    model = TransformerLM(ModelConfig(vocab_size=2000, **MODEL))
    path = folder / "best.pt"
    config = {"model": model.config.model_dump(mode="json")}
    save_checkpoint(model, None, 0, path, config=config, tokenizer_json=tokenizer.to_json())
    return path


def seconds(command: list[str]) -> float:
    """Wall time of one run of `command` (which must succeed)."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = write_checkpoint(Path(folder))
        commands = {
            "torch": [sys.executable, "-c", "import torch"],
            "generate": [sys.executable, "-m", "lmkit", "generate", str(checkpoint), "--prompt", "ROMEO:",
                         "--max-new-tokens", "1", "--device", "cpu", "--threads", "1"],
            "help": [sys.executable, "-m", "lmkit", "--help"],
        }  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                times[name].append(seconds(command))
    median = {name: statistics.median(values) for name, values in times.items()}
    for name, value in median.items():
        print(f"{name:9s} median {value:.3f} s  (runs: {', '.join(f'{v:.2f}' for v in times[name])})")
    print(f"lmkit's own start-up (generate - torch): {median['generate'] - median['torch']:.3f} s")
    start = time.perf_counter()
    choice = choose_threads()
    print(f"automatic thread choice: {time.perf_counter() - start:.3f} s ({choice.reason})")


if __name__ == "__main__":
    main()
