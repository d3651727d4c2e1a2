"""Quickstart-size training and generation at 1 CPU thread against torch's default thread count, side by side.

The quickstart's model (vocab 2000, d_model 128, 4 layers, 4 heads, context 128), randomly initialised, float32
on the CPU:
- train: lmkit's forward, cross-entropy, backward and AdamW step on batches of 32 x 128 tokens (tokens/s);
- generate: `lmkit.generate.generate`, greedy, 128 new tokens after a short prompt, batch 1 (tokens/s).
Each `--rounds` round measures every thread count in turn (alternating, so a burst of load from other
processes hits all of them alike); the median of the rounds is quoted for each, and the ratio to 1 thread.
torch's default is the thread count torch starts with (one per core it sees, or OMP_NUM_THREADS); the count
lmkit picks by itself (lmkit.threads.choose_threads) is printed with its reason, and the load average.

    python benchmarks/threads.py                  # 3 rounds
    python benchmarks/threads.py --rounds 5 --threads 1 2 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from lmkit.generate import generate
from lmkit.model import ModelConfig, TransformerLM
from lmkit.threads import choose_threads
from lmkit.tokenizer import Tokenizer
from lmkit.training import AdamW, cross_entropy

TORCH_DEFAULT = torch.get_num_threads()  # read before anything changes it
QUICKSTART = ModelConfig(vocab_size=2000, context_length=128, d_model=128, num_layers=4, num_heads=4)
BATCH = 32


def train_tokens_per_s(model: TransformerLM, optimizer: AdamW, steps: int = 6, warmup: int = 2) -> float:
    """Tokens per second of full training steps (the median step after `warmup` steps)."""
    times = []
    for step in range(warmup + steps):
        inputs = torch.randint(0, QUICKSTART.vocab_size, (BATCH, QUICKSTART.context_length))
        start = time.perf_counter()
        loss = cross_entropy(model(inputs), torch.roll(inputs, -1, dims=1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return BATCH * QUICKSTART.context_length / statistics.median(times)


def generate_tokens_per_s(model: TransformerLM, tokenizer: Tokenizer, new_tokens: int = 128) -> float:
    """Tokens per second of greedy generation, batch 1, through lmkit.generate.generate."""
    start = time.perf_counter()
    out = generate(model, tokenizer, "ROMEO: the night is", max_new_tokens=new_tokens, temperature=0)
    return len(out.ids) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, nargs="+", default=None, help="counts to compare (default: 1 and torch's)"
    )
    args = parser.parse_args()
    counts = args.threads or sorted({1, TORCH_DEFAULT})
    choice = choose_threads()
    print(f"torch default threads: {TORCH_DEFAULT}; lmkit would choose {choice.count} ({choice.reason})")
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}; load average at start {os.getloadavg()}")
    torch.manual_seed(0)
    model = TransformerLM(QUICKSTART)
    optimizer = AdamW(model.parameters(), lr=1e-3)
    # A byte-level tokenizer: the prompt's ids, nothing more, are needed.
    tokenizer = Tokenizer({i: bytes([i]) for i in range(256)}, [])
    results: dict[str, dict[int, list[float]]] = {"train": {n: [] for n in counts}, "generate": {n: [] for n in counts}}
    for round_number in range(args.rounds):
        for count in counts:
            torch.set_num_threads(count)
            results["train"][count].append(train_tokens_per_s(model, optimizer))
            results["generate"][count].append(generate_tokens_per_s(model.eval(), tokenizer))
            model.train()
        print(
            f"round {round_number + 1}: "
            + "; ".join(
                f"{count} thread(s): train {results['train'][count][-1]:,.0f} tok/s, "
                f"generate {results['generate'][count][-1]:,.0f} tok/s"
                for count in counts
            )
        )
    print(f"load average at end {os.getloadavg()}")
    print(f"{'job':<10}" + "".join(f"{f'{n} thread(s)':>18}" for n in counts) + f"{'ratio to 1 thread':>22}")
    for job, by_count in results.items():
        medians = {n: statistics.median(values) for n, values in by_count.items()}
        ratios = ", ".join(f"{n}: {medians[n] / medians[counts[0]]:.2f}x" for n in counts[1:])
        print(f"{job:<10}" + "".join(f"{medians[n]:>14,.0f} tok/s" for n in counts) + f"{ratios:>22}")


if __name__ == "__main__":
    main()
