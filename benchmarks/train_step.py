"""Train-step speed of lmkit's TransformerLM against the plain-PyTorch anchor, side by side.

At the TinyStories shape (vocab 10000, d_model 512, 4 layers, 16 heads, d_ff 1344, context 256) it runs
the anchor `ref_model.py BATCH` as a subprocess with this process's thread count, then lmkit's own step
(forward, cross-entropy, backward, optimizer) the same way: 8 steps, the median of the last 5. It does
this `--rounds` times, alternating, and quotes each side's best round, their ratio lmkit / anchor, and the
median of the ratios within each round (the machines are shared and noisy: the best round is the least
disturbed one).

    python benchmarks/train_step.py                       # batch 8, 3 rounds, anchor from /work/shared/bench
    python benchmarks/train_step.py --batch 8 --rounds 3 --bench-dir /work/shared/bench
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from anchors import ref_model_tokens_per_s

from lmkit.model import ModelConfig, TransformerLM

TINYSTORIES = ModelConfig(vocab_size=10000, context_length=256, d_model=512, num_layers=4, num_heads=16, d_ff=1344)


def training_pieces() -> tuple[type, object, str]:
    """lmkit's AdamW and cross_entropy where lmkit.training provides them, else torch's; and a label."""
    try:
        from lmkit.training import AdamW, cross_entropy

        return AdamW, cross_entropy, "lmkit.training.AdamW + lmkit.training.cross_entropy"
    except ImportError:
        import torch.nn.functional as F

        def torch_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))

        return torch.optim.AdamW, torch_cross_entropy, "torch.optim.AdamW + F.cross_entropy (lmkit.training absent)"


def lmkit_tokens_per_second(batch: int, steps: int = 8, warmup: int = 3) -> float:
    """Median train-step throughput of lmkit's model at the TinyStories shape."""
    optimizer_class, loss_fn, _ = training_pieces()
    torch.manual_seed(0)
    model = TransformerLM(TINYSTORIES)
    optimizer = optimizer_class(model.parameters(), lr=1e-3)
    shape = (batch, TINYSTORIES.context_length)
    x, y = torch.randint(0, TINYSTORIES.vocab_size, shape), torch.randint(0, TINYSTORIES.vocab_size, shape)
    times = []
    for step in range(steps):
        start = time.perf_counter()
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return batch * TINYSTORIES.context_length / sorted(times)[len(times) // 2]


def anchor_tokens_per_second(bench_dir: Path, batch: int) -> float:
    """Run the anchor script with this process's thread count and read its tokens/s."""
    threads = str(torch.get_num_threads())
    return ref_model_tokens_per_s(
        bench_dir, batch, {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    )


def main() -> None:
    """Parse the arguments, run both sides, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bench-dir", type=Path, default=Path("/work/shared/bench"))
    args = parser.parse_args()

    print(f"shape: {TINYSTORIES.model_dump()}, batch {args.batch}, {torch.get_num_threads()} threads")
    print(f"lmkit optimizer and loss: {training_pieces()[2]}")
    anchor, ours = [], []
    for round_index in range(args.rounds):
        anchor.append(anchor_tokens_per_second(args.bench_dir, args.batch))
        ours.append(lmkit_tokens_per_second(args.batch))
        print(f"round {round_index + 1}: anchor {anchor[-1]:,.0f} tokens/s, lmkit {ours[-1]:,.0f} tokens/s")
    print(f"anchor (ref_model.py): {max(anchor):,.0f} tokens/s (best of {args.rounds})")
    print(f"lmkit:                 {max(ours):,.0f} tokens/s (best of {args.rounds})")
    print(f"ratio lmkit / anchor:  {max(ours) / max(anchor):.2f}x (best rounds)")
    ratios = sorted(o / a for o, a in zip(ours, anchor, strict=True))
    print(f"median of the rounds' ratios: {ratios[len(ratios) // 2]:.2f}x")


if __name__ == "__main__":
    main()
