"""The Transformer's building blocks, each written from its formula: Linear, Embedding, RMSNorm, the
feed-forward networks (SwiGLU and plain SiLU), softmax and SiLU.

Every weight matrix is stored (out_features, in_features); there are no biases.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def silu(x: Tensor) -> Tensor:
    """SiLU (swish): x · sigmoid(x)."""
    return x * torch.sigmoid(x)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along `dim`, subtracting the maximum first so large logits cannot overflow."""
    shifted = x - x.amax(dim=dim, keepdim=True)
    exps = shifted.exp()
    return exps / exps.sum(dim=dim, keepdim=True)


class Linear(nn.Module):
    """y = x Wᵀ with W of shape (out_features, in_features), no bias.

    Init: truncated normal, mean 0, std sqrt(2 / (in + out)), cut at ±3 std.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        std = math.sqrt(2.0 / (in_features + out_features))
        nn.init.trunc_normal_(self.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features)."""
        return x @ self.weight.T

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}"


class Embedding(nn.Module):
    """Row lookup in a (num_embeddings, embedding_dim) table. Init: truncated normal, std 1, cut at ±3."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        nn.init.trunc_normal_(self.weight, mean=0.0, std=1.0, a=-3.0, b=3.0)

    def forward(self, token_ids: Tensor) -> Tensor:
        """(...) integer ids -> (..., embedding_dim).

        F.embedding is exactly `self.weight[token_ids]`; its backward (a dense scatter-add) is faster
        than indexing's general index_put.
        """
        return F.embedding(token_ids, self.weight)

    def extra_repr(self) -> str:
        return f"num_embeddings={self.weight.shape[0]}, embedding_dim={self.weight.shape[1]}"


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x / sqrt(mean(x²) + eps) · weight over the last dimension, in float32, returned in x's dtype."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (normed * weight.float()).to(x.dtype)


def fused_rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """`rms_norm` by torch's F.rms_norm (one kernel on GPUs)."""
    return F.rms_norm(x.float(), weight.shape, weight.float(), eps).to(x.dtype)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · g over the last dimension; g starts at ones.

    Computed in float32 and returned in the input's dtype, so bf16 activations keep an exact norm. On a CPU
    the formula is written out (it measured faster there than torch's F.rms_norm); on GPUs F.rms_norm's one
    fused kernel replaces its five elementwise passes. Both give the same numbers (tested).
    """

    def __init__(
        self,
        d_model: int,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        """(..., d_model) -> (..., d_model), same dtype as x."""
        norm = rms_norm if x.device.type == "cpu" else fused_rms_norm
        return norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class SiLUFeedForward(nn.Module):
    """The ungated feed-forward network of the FFN ablation: W2 SiLU(W1 x) (usually d_ff = 4 d_model).

    `fused` (default True) uses torch's single-kernel F.silu; False uses the `silu` formula above.
    Both give the same numbers (tested).
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        fused: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.fused = fused
        self.w1 = Linear(d_model, d_ff, device=device, dtype=dtype)
        self.w2 = Linear(d_ff, d_model, device=device, dtype=dtype)

    def activation(self, x: Tensor) -> Tensor:
        """SiLU, through torch's kernel or the plain formula."""
        return F.silu(x) if self.fused else silu(x)

    def forward(self, x: Tensor) -> Tensor:
        """(..., d_model) -> (..., d_model)."""
        return self.w2(self.activation(self.w1(x)))


class SwiGLU(SiLUFeedForward):
    """The SwiGLU feed-forward network: W2 (SiLU(W1 x) ⊙ W3 x), the ungated network plus a gate W3."""

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        fused: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(d_model, d_ff, fused=fused, device=device, dtype=dtype)
        self.w3 = Linear(d_model, d_ff, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        """(..., d_model) -> (..., d_model)."""
        return self.w2(self.activation(self.w1(x)) * self.w3(x))
