"""The shape of a Transformer LM and its ablation switches, as data."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


def default_d_ff(d_model: int, ffn: str) -> int:
    """The feed-forward width used when none is given.

    SwiGLU: 8/3 d_model rounded to the nearest multiple of 64 (at least 64), so that its three matrices
    hold about as many parameters as a 4 d_model two-matrix FFN; 512 gives 1344 (the TinyStories shape).
    SiLU: 4 d_model.
    """
    if ffn == "silu":
        return 4 * d_model
    return max(64, round(8 * d_model / 3 / 64) * 64)


class ModelConfig(BaseModel):
    """A decoder-only Transformer LM's shape. Impossible shapes raise pydantic.ValidationError.

    `d_ff` left out (or None) becomes `default_d_ff(d_model, ffn)`; after validation it is always an int.
    """

    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(gt=0, description="number of token ids")
    context_length: int = Field(gt=0, description="the longest sequence the model reads")
    d_model: int = Field(gt=0, description="width of the residual stream")
    num_layers: int = Field(gt=0, description="number of Transformer blocks")
    num_heads: int = Field(gt=0, description="attention heads per block; must divide d_model")
    d_ff: int | None = Field(default=None, gt=0, description="feed-forward width (default: see default_d_ff)")
    rope_theta: float = Field(default=10000.0, gt=0, description="RoPE base wavelength")
    norm: Literal["pre", "post", "none"] = "pre"
    position: Literal["rope", "none"] = "rope"
    ffn: Literal["swiglu", "silu"] = "swiglu"
    tie_embeddings: bool = False

    @model_validator(mode="after")
    def _check_shape(self) -> ModelConfig:
        if self.d_model % self.num_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must divide d_model ({self.d_model}) evenly; "
                f"pick a head count such as {_divisor_near(self.d_model, self.num_heads)}"
            )
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(
                f"RoPE needs an even head size, but d_model / num_heads = {self.head_dim}; "
                "change num_heads or d_model, or set position = 'none'"
            )
        if self.d_ff is None:
            self.d_ff = default_d_ff(self.d_model, self.ffn)
        return self

    @property
    def head_dim(self) -> int:
        """Size of each attention head, d_model / num_heads."""
        return self.d_model // self.num_heads


def _divisor_near(n: int, target: int) -> int:
    """The divisor of n closest to target, for a helpful error message."""
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - target), d))
