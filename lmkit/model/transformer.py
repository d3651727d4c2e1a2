"""The decoder-only Transformer LM: token embeddings, a stack of blocks, a final norm and the LM head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lmkit.model.attention import CacheFeed, KVCache, MultiHeadSelfAttention, RotaryPositionalEmbedding
from lmkit.model.config import ModelConfig
from lmkit.model.documents import Documents
from lmkit.model.layers import Embedding, Linear, RMSNorm, SiLUFeedForward, SwiGLU


def _norm(config: ModelConfig, device: torch.device | str | None, dtype: torch.dtype | None) -> nn.Module:
    """An RMSNorm, or the identity (no parameters) when the config's norm is "none"."""
    if config.norm == "none":
        return nn.Identity()
    return RMSNorm(config.d_model, eps=config.norm_eps, device=device, dtype=dtype)


class TransformerBlock(nn.Module):
    """One Transformer block: attention then feed-forward, each with a residual connection.

    norm "pre" (default): z = x + attn(ln1(x)); y = z + ffn(ln2(z)).
    norm "post":          z = ln1(x + attn(x)); y = ln2(z + ffn(z)).
    norm "none":          z = x + attn(x);      y = z + ffn(z).
    """

    def __init__(
        self,
        config: ModelConfig,
        rope: RotaryPositionalEmbedding | None = None,
        fused: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.post_norm = config.norm == "post"
        self.ln1 = _norm(config, device, dtype)
        self.attn = MultiHeadSelfAttention(
            config.d_model,
            config.num_heads,
            rope=rope,
            fused=fused,
            device=device,
            dtype=dtype,
            num_kv_heads=config.num_kv_heads,
            qk_norm=config.qk_norm,
        )
        self.ln2 = _norm(config, device, dtype)
        ffn_class = SwiGLU if config.ffn == "swiglu" else SiLUFeedForward
        self.ffn = ffn_class(config.d_model, config.d_ff, fused=fused, device=device, dtype=dtype)

    def forward(
        self,
        x: Tensor,
        kv_cache: KVCache | None = None,
        layer_index: int = 0,
        rope_tables: tuple[Tensor, Tensor] | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """(batch, seq, d_model) -> (batch, seq, d_model); see MultiHeadSelfAttention for the cache, the RoPE
        tables and the mask."""
        if self.post_norm:
            z = self.ln1(x + self.attn(x, kv_cache, layer_index, rope_tables, attn_mask))
            return self.ln2(z + self.ffn(z))
        z = x + self.attn(self.ln1(x), kv_cache, layer_index, rope_tables, attn_mask)
        return z + self.ffn(self.ln2(z))


class TransformerLM(nn.Module):
    """A Llama-style decoder-only LM: token_embeddings → layers → ln_final → lm_head → logits.

    `fused` (default True) uses torch's fused kernels where they give the same math (attention through
    F.scaled_dot_product_attention, F.silu); False runs every formula as written in lmkit.model.
    With `tie_embeddings` the LM head and the token embeddings share one matrix, initialised as the LM
    head (the small std keeps the first logits near uniform).

    Incremental decoding: `cache = model.new_kv_cache(batch_size)`, then `model(ids, kv_cache=cache)`
    with the prompt, then with each new token (B, 1); see KVCache. Logits equal the full forward pass's.
    """

    def __init__(
        self,
        config: ModelConfig,
        fused: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.token_embeddings = Embedding(config.vocab_size, config.d_model, device=device, dtype=dtype)
        rope = None
        if config.position == "rope":
            rope = RotaryPositionalEmbedding(config.rope_theta, config.head_dim, config.context_length, device=device)
        self.rope = rope  # shared by every layer's attention; the model looks up its tables once per forward
        self.layers = nn.ModuleList(
            TransformerBlock(config, rope=rope, fused=fused, device=device, dtype=dtype)
            for _ in range(config.num_layers)
        )
        self.ln_final = _norm(config, device, dtype)
        self.lm_head = Linear(config.d_model, config.vocab_size, device=device, dtype=dtype)
        if config.tie_embeddings:
            self.token_embeddings.weight = self.lm_head.weight

    def forward(
        self,
        token_ids: Tensor,
        kv_cache: KVCache | None = None,
        documents: Documents | None = None,
        last_only: bool = False,
        slots: Sequence[int] | None = None,
        counts: Sequence[int] | None = None,
    ) -> Tensor:
        """(batch, seq) int64 token ids -> (batch, seq, vocab_size) unnormalised logits.

        With a kv_cache each row's ids are the tokens after those its cache slot holds, and the slot is advanced
        past them. By default row b feeds slot b; `slots` names each row's slot instead, and `counts` how many
        of the row's tokens are real (the rest is padding, neither stored nor attended to; its logits mean
        nothing): rows of different lengths, at different positions, decode together. With `documents`
        (lmkit.model.documents) each token attends only within its document, whose positions start at 0.
        `last_only` computes the logits of each row's last real position alone, (batch, 1, vocab_size): all
        that sampling needs, where a prompt's (seq, vocab_size) logits would cost the LM head's work and memory
        seq times over. Raises ValueError if a sequence would run past the context length (or its cache slot).
        """
        if documents is not None and kv_cache is not None:
            raise ValueError("documents are for whole rows (training, scoring), not with a KV cache")
        if kv_cache is None and (slots is not None or counts is not None):
            raise ValueError("slots and counts place rows in a KV cache; pass one")
        batch, seq_len = token_ids.shape
        if kv_cache is None and seq_len > self.config.context_length:
            raise ValueError(
                f"{seq_len} positions do not fit: the model reads at most {self.config.context_length} "
                "(crop the input, or start a fresh KV cache with the last tokens)"
            )
        feed = None if kv_cache is None else kv_cache.begin(batch, seq_len, slots, counts)
        x = self.token_embeddings(token_ids)
        rope_tables, attn_mask = self._positions_and_mask(seq_len, feed, documents)
        for index, layer in enumerate(self.layers):
            x = layer(x, kv_cache, index, rope_tables, attn_mask)
        if kv_cache is not None:
            kv_cache.end()
        if last_only:
            last = None if feed is None else feed.last_index
            x = x[:, -1:] if last is None else x[torch.arange(batch, device=x.device), last][:, None]
        return self.lm_head(self.ln_final(x))

    def _positions_and_mask(
        self, seq_len: int, feed: CacheFeed | None, documents: Documents | None
    ) -> tuple[tuple[Tensor, Tensor] | None, Tensor | None]:
        """RoPE's tables for the tokens' positions (None without RoPE), looked up once for every layer, and the
        attention mask (None: causal). Positions run from the cache's start (0 without a cache) unless the
        documents or a ragged cache feed give each row its own."""
        start, positions, mask = 0, None, None
        if feed is not None:
            start, positions, mask = feed.starts[0], feed.positions, feed.mask
        if documents is not None:
            positions, mask = documents.positions, documents.mask
        if self.rope is None:
            return None, mask
        return (self.rope.tables(start, seq_len) if positions is None else self.rope.tables_at(positions)), mask

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KVCache for `batch_size` sequences of up to `max_len` (default and most:
        context_length) positions, on this model's device and in its dtype."""
        max_len = self.config.context_length if max_len is None else max_len
        if not 0 < max_len <= self.config.context_length:
            raise ValueError(f"max_len must be in 1 … {self.config.context_length}, got {max_len}")
        weight = self.lm_head.weight
        return KVCache(
            self.config.num_layers,
            batch_size,
            self.config.num_kv_heads,
            self.config.head_dim,
            max_len,
            device=weight.device,
            dtype=weight.dtype,
        )
