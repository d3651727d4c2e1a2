"""The training loss: cross-entropy of next-token logits, stable for large logits."""

from __future__ import annotations

import torch


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over positions of `logsumexp(logits) - logits[target]`.

    `logits` has shape (..., vocab) and `targets` the leading shape (...) with integer ids. Logits are
    taken to float32 first so bfloat16 activations do not lose the loss's precision; logsumexp subtracts
    the row maximum before exponentiating, so logits of 1e4 neither overflow nor underflow.
    """
    logits = logits.float()
    target_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (torch.logsumexp(logits, dim=-1) - target_logits).mean()
