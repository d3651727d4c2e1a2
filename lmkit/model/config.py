"""The shape of a Transformer LM and its ablation switches, as data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmkit.errors import InputError, validation_error_message
from lmkit.fileio import read_toml

INT64_MAX = 2**63 - 1
# Every integer a config hands to torch or numpy fits their 64-bit integers; a larger one is refused by name.
Int64 = Annotated[int, Field(le=INT64_MAX)]


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

    `d_ff` left out (or None) becomes `default_d_ff(d_model, ffn)` and `num_kv_heads` becomes `num_heads`
    (plain multi-head attention); after validation both are always ints.
    """

    # strict: `d_model = true` or `"64"` is refused, not read as 1 or 64; no inf or nan
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    vocab_size: Int64 = Field(gt=0, description="number of token ids")
    context_length: Int64 = Field(gt=0, description="the longest sequence the model reads")
    d_model: Int64 = Field(gt=0, description="width of the residual stream")
    num_layers: Int64 = Field(gt=0, description="number of Transformer blocks")
    num_heads: Int64 = Field(gt=0, description="attention heads per block; must divide d_model")
    num_kv_heads: Int64 | None = Field(
        default=None,
        gt=0,
        description="key/value heads, shared by groups of query heads (grouped-query attention); "
        "must divide num_heads (default: num_heads)",
    )
    d_ff: Int64 | None = Field(default=None, gt=0, description="feed-forward width (default: see default_d_ff)")
    rope_theta: float = Field(default=10000.0, gt=0, description="RoPE base wavelength")
    norm: Literal["pre", "post", "none"] = Field(
        default="pre", description="RMSNorm placement: before each sublayer, after the residual sum, or none"
    )
    position: Literal["rope", "none"] = Field(
        default="rope", description="positional encoding: rotary on queries and keys, or none (NoPE)"
    )
    ffn: Literal["swiglu", "silu"] = Field(
        default="swiglu", description="feed-forward: W2(SiLU(W1 x) * W3 x), or W2 SiLU(W1 x) with d_ff 4 d_model"
    )
    tie_embeddings: bool = Field(default=False, description="share one matrix between token embeddings and LM head")
    norm_eps: float = Field(default=1e-5, gt=0, description="RMSNorm's epsilon, added to mean(x²)")
    qk_norm: bool = Field(
        default=False, description="RMSNorm on each head's queries and keys before RoPE (QK-norm); a stabiliser"
    )

    @model_validator(mode="after")
    def _check_shape(self) -> ModelConfig:
        if self.d_model % self.num_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must divide d_model ({self.d_model}) evenly "
                "(each head gets d_model / num_heads dimensions)"
            )
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(
                f"RoPE needs an even head size, but d_model / num_heads = {self.head_dim}; "
                "change num_heads or d_model, or set position = 'none'"
            )
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads}): "
                "each key/value head serves the same number of query heads"
            )
        if self.d_ff is None:
            self.d_ff = default_d_ff(self.d_model, self.ffn)
        return self

    @property
    def head_dim(self) -> int:
        """Size of each attention head, d_model / num_heads."""
        return self.d_model // self.num_heads


_GPT2 = dict(vocab_size=50257, context_length=1024)

PRESETS: dict[str, ModelConfig] = {
    # The GPT-2 family's shapes (d_ff = 4 d_model) built as lmkit models, and a 17M-parameter TinyStories LM.
    "gpt2-small": ModelConfig(**_GPT2, d_model=768, num_layers=12, num_heads=12, d_ff=3072),
    "gpt2-medium": ModelConfig(**_GPT2, d_model=1024, num_layers=24, num_heads=16, d_ff=4096),
    "gpt2-large": ModelConfig(**_GPT2, d_model=1280, num_layers=36, num_heads=20, d_ff=5120),
    "gpt2-xl": ModelConfig(**_GPT2, d_model=1600, num_layers=48, num_heads=25, d_ff=6400),
    "tinystories-17m": ModelConfig(
        vocab_size=10000, context_length=256, d_model=512, num_layers=4, num_heads=16, d_ff=1344
    ),
}


def model_preset(name: str) -> ModelConfig:
    """The named preset's config (a copy); InputError listing the known names if there is none."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name].model_copy()


def load_model_table(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig in the [model] table of a TOML run config; the file's other tables are not read.

    InputError (one line) if the file is missing or not TOML, has no [model] table, or the table has an
    unknown key or an impossible shape.
    """
    path = Path(path)
    raw = read_toml(path)
    table = raw.get("model")
    if not isinstance(table, dict):
        raise InputError(f"config file {path} has no [model] table")
    try:
        return ModelConfig.model_validate(table)
    except ValidationError as err:
        raise InputError(f"{path} [model]: {validation_error_message(err)}") from None
