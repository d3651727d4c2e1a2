"""Q, K and V projections: one matmul with the three weights concatenated on every call (what lmkit did) or
three F.linear calls, at the TinyStories attention shape (d_model 512, 16 heads), on this machine's device.

Two figures per way, each the median of `--repeats` timings after warm-up: a train micro-step (forward and
backward of the projections for batch 8 x 256 tokens) and one decode step (1 token, batch 1), the case where
the concatenation copies the three weights to produce one row.

    python benchmarks/qkv_projection.py --repeats 30
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

D_MODEL, KV_DIM = 512, 512


def concatenated(x: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The three projections as one matmul with the weights stacked (a copy of them on every call)."""
    return (x @ torch.cat((wq, wk, wv)).T).split((wq.shape[0], wk.shape[0], wv.shape[0]), dim=-1)


def three_linears(x: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The three projections as three matmuls, no copy."""
    return F.linear(x, wq), F.linear(x, wk), F.linear(x, wv)


def median_ms(run, repeats: int) -> float:
    """Median wall time of `run()` in milliseconds, after three warm-up calls."""
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    weights = [(torch.randn(n, D_MODEL) * 0.02).requires_grad_() for n in (D_MODEL, KV_DIM, KV_DIM)]
    batch = torch.randn(8, 256, D_MODEL)
    token = torch.randn(1, 1, D_MODEL)
    print(f"threads {torch.get_num_threads()}, d_model {D_MODEL}")
    for name, project in (("concatenated", concatenated), ("three F.linear", three_linears)):

        def train_step(project=project) -> None:
            sum(part.square().mean() for part in project(batch, *weights)).backward()

        def decode_step(project=project) -> None:
            with torch.no_grad():
                project(token, *weights)

        print(
            f"{name:>14}: train fwd+bwd {median_ms(train_step, args.repeats):7.2f} ms, "
            f"decode {median_ms(decode_step, args.repeats * 10) * 1000:7.1f} us"
        )


if __name__ == "__main__":
    main()
