"""The Transformer LM, built from first principles: see docs/model.md for the exact math."""

from lmkit.model.attention import (
    MultiHeadSelfAttention,
    RotaryPositionalEmbedding,
    scaled_dot_product_attention,
)
from lmkit.model.config import ModelConfig
from lmkit.model.documents import Documents
from lmkit.model.layers import Embedding, Linear, RMSNorm, SwiGLU, silu, softmax
from lmkit.model.transformer import TransformerBlock, TransformerLM

__all__ = [
    "ModelConfig",
    "Documents",
    "TransformerLM",
    "TransformerBlock",
    "MultiHeadSelfAttention",
    "RotaryPositionalEmbedding",
    "SwiGLU",
    "RMSNorm",
    "Linear",
    "Embedding",
    "softmax",
    "silu",
    "scaled_dot_product_attention",
]
