"""The training loss: cross-entropy of next-token logits, stable for large logits."""

from __future__ import annotations

import torch


class _CrossEntropy(torch.autograd.Function):
    """Forward: `logsumexp(logits) - logits[target]`, averaged. Backward: `(softmax - onehot) / N`, built in
    one full-size buffer (autograd through logsumexp and gather would allocate and add several)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(logits, dim=-1)  # subtracts the row maximum first: no overflow at 1e4
        loss = (lse - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)).mean()
        ctx.save_for_backward(logits, targets, lse)
        return loss

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, targets, lse = ctx.saved_tensors
        scale = grad / targets.numel()
        grad_logits = (logits - lse.unsqueeze(-1)).exp_().mul_(scale)  # softmax, scaled
        minus_scale = (-scale).expand(targets.shape).unsqueeze(-1)
        grad_logits.scatter_add_(-1, targets.unsqueeze(-1), minus_scale)  # minus the one-hot target
        return grad_logits, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over positions of `logsumexp(logits) - logits[target]`.

    `logits` has shape (..., vocab) and `targets` the leading shape (...) with integer ids. Logits are
    taken to float32 first so bfloat16 activations do not lose the loss's precision; logsumexp subtracts
    the row maximum before exponentiating, so logits of 1e4 neither overflow nor underflow.
    """
    return _CrossEntropy.apply(logits.float(), targets)
