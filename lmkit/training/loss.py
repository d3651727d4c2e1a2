"""The training loss: cross-entropy of next-token logits, stable for large logits, in row chunks."""

from __future__ import annotations

import torch

# Rows of logits taken to float32 at a time (a chunk is at most this many numbers, 64 MB): the loss never
# holds a float32 copy of all the logits, nor a float32 gradient of them (32 x 1024 positions of a 50K
# vocabulary would need 6.6 GB for each).
CHUNK_NUMBERS = 2**24
# A target of IGNORE takes no part in the loss (its position is context only, as in supervised fine-tuning).
IGNORE = -100


def _chunks(flat: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) row ranges of `flat` (rows, vocab) of at most CHUNK_NUMBERS numbers each."""
    rows = max(1, CHUNK_NUMBERS // flat.shape[-1])
    return [(start, min(start + rows, flat.shape[0])) for start in range(0, flat.shape[0], rows)]


class _CrossEntropy(torch.autograd.Function):
    """Forward: `logsumexp(logits) - logits[target]`, averaged. Backward: `(softmax - onehot) / N`.

    Both run over chunks of rows in float32 and keep only the logits as given (bfloat16 under autocast) and
    each row's logsumexp; the gradient is written chunk by chunk into one buffer in the logits' dtype
    (autograd through logsumexp and gather would allocate and add several full-size ones)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        flat, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1, 1)
        kept = flat_targets != IGNORE
        flat_targets = flat_targets.where(kept, 0)  # any id: the row's loss and gradient are zeroed below
        lse = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
        losses = torch.empty_like(lse)
        for start, end in _chunks(flat):
            chunk = flat[start:end].float()
            lse[start:end] = torch.logsumexp(chunk, dim=-1)  # subtracts the row maximum first: no overflow at 1e4
            losses[start:end] = lse[start:end] - chunk.gather(-1, flat_targets[start:end]).squeeze(-1)
        count = kept.sum().clamp(min=1)
        ctx.save_for_backward(flat, flat_targets, lse, kept, count)
        ctx.logits_shape = logits.shape
        return (losses * kept.squeeze(-1)).sum() / count

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        flat, flat_targets, lse, kept, count = ctx.saved_tensors
        scale = grad / count
        grad_logits = torch.empty_like(flat)
        in_place = flat.dtype == torch.float32  # then each chunk is computed in the buffer itself, not copied in
        for start, end in _chunks(flat):
            if in_place:
                chunk = torch.sub(flat[start:end], lse[start:end, None], out=grad_logits[start:end])
            else:
                chunk = flat[start:end].float() - lse[start:end, None]
            chunk.exp_().mul_(scale * kept[start:end])  # softmax, scaled; ignored rows get no gradient
            minus_scale = (-scale * kept[start:end]).to(chunk.dtype)
            chunk.scatter_add_(-1, flat_targets[start:end], minus_scale)  # minus the one-hot target
            if not in_place:
                grad_logits[start:end] = chunk
        return grad_logits.view(ctx.logits_shape), None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over positions of `logsumexp(logits) - logits[target]`, as a float32 scalar; positions whose target
    is IGNORE (-100) are left out of the mean and get no gradient.

    `logits` has shape (..., vocab) and `targets` the leading shape (...) with integer ids. Each chunk of
    rows is taken to float32 first so bfloat16 activations do not lose the loss's precision; logsumexp
    subtracts the row maximum before exponentiating, so logits of 1e4 neither overflow nor underflow.
    The gradient has the logits' dtype.
    """
    return _CrossEntropy.apply(logits, targets)
