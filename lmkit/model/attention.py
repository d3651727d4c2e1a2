"""Attention: rotary position embeddings, scaled dot-product attention, causal multi-head self-attention,
and the KV cache that lets generation feed one new token at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from lmkit.model.layers import Linear, RMSNorm, softmax


class RotaryPositionalEmbedding(nn.Module):
    """RoPE: rotates each pair of dims (2k, 2k+1) of a head at position i by the angle i / theta^(2k/d_k).

    The cos/sin tables, (max_seq_len, d_k) in float32, are non-persistent buffers: they are rebuilt
    from (theta, d_k, max_seq_len), never saved in a checkpoint.
    """

    def __init__(self, theta: float, d_k: int, max_seq_len: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        if d_k % 2:
            raise ValueError(f"RoPE needs an even head size, got {d_k}")
        inv_freq = theta ** (-torch.arange(0, d_k, 2, device=device, dtype=torch.float32) / d_k)
        angles = torch.outer(torch.arange(max_seq_len, device=device, dtype=torch.float32), inv_freq)
        # Laid out per dim (max_seq_len, d_k): cos for both dims of a pair; sin with the sign each
        # dim's rotated partner needs (-sin on the even dim, +sin on the odd one).
        self.register_buffer("cos", angles.cos().repeat_interleave(2, dim=-1), persistent=False)
        self.register_buffer("sin", torch.stack((-angles.sin(), angles.sin()), dim=-1).flatten(-2), persistent=False)

    def forward(self, x: Tensor, token_positions: Tensor | None = None) -> Tensor:
        """Rotate x (..., seq_len, d_k); token_positions (..., seq_len), default 0 … seq_len-1.

        token_positions' leading dims must broadcast against x's (for x of shape (B, H, T, d_k) pass
        positions of shape (T,) or (B, 1, T)).
        """
        if token_positions is None:
            return rotate(x, self.tables(0, x.shape[-2]))
        return rotate(x, (self.cos[token_positions], self.sin[token_positions]))

    def tables_at(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """The (cos, sin) rows of each row's own `positions` (B, T), shaped (B, 1, T, d_k) to rotate queries and
        keys of shape (B, H, T, d_k): for documents whose positions restart (lmkit.model.documents)."""
        return self.cos[positions][:, None], self.sin[positions][:, None]

    def tables(self, start: int, length: int) -> tuple[Tensor, Tensor]:
        """The (cos, sin) rows for positions start … start+length-1, each (length, d_k): what `rotate` takes.

        A model looks them up once per forward pass and hands them to every layer."""
        return self.cos[start : start + length], self.sin[start : start + length]


def rotate(x: Tensor, tables: tuple[Tensor, Tensor]) -> Tensor:
    """RoPE on x (..., seq_len, d_k) with the (cos, sin) rows of its positions (RotaryPositionalEmbedding.tables)."""
    # Cast the tables, not x: bf16 activations stay bf16 (float32 tables would promote them).
    cos, sin = (table.to(x.dtype) for table in tables)
    # (x_2k, x_2k+1) -> (x_2k cos - x_2k+1 sin, x_2k+1 cos + x_2k sin): multiply x by cos, and x with
    # the two dims of each pair swapped by the signed sin. This is contiguous elementwise work; slicing out
    # the even and odd dims instead is about 20x slower forward and backward on CPU.
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return x * cos + swapped * sin


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(Q Kᵀ / sqrt(d_k)) V for q (..., n, d_k), k (..., m, d_k), v (..., m, d_v) -> (..., n, d_v).

    `mask` (n, m) or broadcastable: True where a query may attend to a key; False becomes -inf.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return softmax(scores, dim=-1) @ v


def causal_mask(num_queries: int, num_keys: int, device: torch.device) -> Tensor:
    """(num_queries, num_keys) bool: the queries are the last positions, each may see keys up to itself."""
    offset = num_keys - num_queries
    queries = torch.arange(offset, num_keys, device=device)
    return torch.arange(num_keys, device=device)[None, :] <= queries[:, None]


class KVCache:
    """The keys and values of every layer for the tokens seen so far, so generation feeds only new tokens.

    Create it with `model.new_kv_cache(batch_size)`: buffers of shape
    (num_layers, batch_size, num_kv_heads, max_len, head_dim) on the model's device, in its dtype
    (num_kv_heads < num_heads with grouped-query attention, which shrinks the cache by that factor).
    Each of the batch_size slots holds one sequence; `lengths[s]` is how many positions slot s holds, which
    is also the position of the next token fed to it.

        cache = model.new_kv_cache(batch_size=1)
        logits = model(prompt_ids, kv_cache=cache)      # (1, T0, V); cache.length == T0
        logits = model(next_id[:, None], kv_cache=cache)  # (1, 1, V) at position T0; cache.length == T0 + 1

    A call feeds every slot the same number of tokens, or, with `slots` and `counts`, some slots each
    their own number (see TransformerLM.forward): sequences of different lengths then share one batch, and a
    sequence can take a slot another has left. Setting `cache.lengths[s] = n` (or `cache.length = n` for every
    slot) rewinds it (positions n and later are forgotten). The model raises ValueError when a call would go
    past `max_len`; to keep generating, rewind to 0 and feed the last tokens again.
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        shape = (num_layers, batch_size, num_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = [0] * batch_size  # on the host: which path a call takes is decided without a device sync
        self._feed: CacheFeed | None = None

    @property
    def batch_size(self) -> int:
        """Slots: sequences held at once."""
        return self.keys.shape[1]

    @property
    def max_len(self) -> int:
        """The most positions a slot can hold."""
        return self.keys.shape[3]

    @property
    def length(self) -> int:
        """The positions every slot holds (ValueError when slots differ: read `lengths`)."""
        if len(set(self.lengths)) > 1:
            raise ValueError(f"the slots hold different numbers of positions: {self.lengths}")
        return self.lengths[0]

    @length.setter
    def length(self, value: int) -> None:
        self.lengths = [value] * self.batch_size

    def move(self, source: int, target: int) -> None:
        """Copy slot `source`'s positions to slot `target` (which then holds that sequence)."""
        end = self.lengths[source]
        self.keys[:, target, :, :end] = self.keys[:, source, :, :end]
        self.values[:, target, :, :end] = self.values[:, source, :, :end]
        self.lengths[target] = end

    def begin(self, batch: int, width: int, slots: Sequence[int] | None, counts: Sequence[int] | None) -> CacheFeed:
        """Plan a call feeding `batch` rows of `width` tokens (see TransformerLM.forward for slots and counts);
        `store` then writes each layer's keys and values by this plan and `end` advances the slots."""
        if slots is None and batch != self.batch_size:
            raise ValueError(f"batch of {batch} does not match the KV cache's {self.batch_size}")
        slots = list(range(self.batch_size)) if slots is None else list(slots)
        counts = [width] * batch if counts is None else list(counts)
        if not len(slots) == len(counts) == batch:
            raise ValueError(f"{batch} rows need as many slots and counts, got {len(slots)} and {len(counts)}")
        if len(set(slots)) < batch or not all(0 <= slot < self.batch_size for slot in slots):
            raise ValueError(f"slots must be distinct, each in 0 … {self.batch_size - 1}: got {slots}")
        if not all(1 <= count <= width for count in counts):
            raise ValueError(f"counts must be in 1 … {width}: got {counts}")
        starts = [self.lengths[slot] for slot in slots]
        over = max(start + count for start, count in zip(starts, counts, strict=True))
        if over > self.max_len:
            raise ValueError(
                f"{over} positions do not fit: the model reads at most {self.max_len} "
                "(crop the input, or rewind the KV cache and feed the last tokens)"
            )
        self._feed = CacheFeed(slots, counts, starts, width, self.keys.device)
        return self._feed

    def store(self, layer_index: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write one layer's new k, v (B, H, T, d) by the current plan (`begin`).

        Returns that layer's keys and values for every position the fed rows may attend to, (B, H, L, d).
        """
        feed = self._feed
        keys, values = self.keys[layer_index], self.values[layer_index]
        if feed.uniform:
            start, end = feed.starts[0], feed.starts[0] + feed.width
            keys[feed.first : feed.last, :, start:end] = k
            values[feed.first : feed.last, :, start:end] = v
        else:
            keys[feed.write_slots, :, feed.write_positions] = k[feed.write_rows, :, feed.write_columns]
            values[feed.write_slots, :, feed.write_positions] = v[feed.write_rows, :, feed.write_columns]
        if feed.contiguous:
            return keys[feed.first : feed.last, :, : feed.span], values[feed.first : feed.last, :, : feed.span]
        return keys[feed.slot_index, :, : feed.span], values[feed.slot_index, :, : feed.span]

    def end(self) -> None:
        """Advance each fed slot past the tokens it was given."""
        feed, self._feed = self._feed, None
        for slot, start, count in zip(feed.slots, feed.starts, feed.counts, strict=True):
            self.lengths[slot] = start + count


class CacheFeed:
    """How one call writes to and reads from a KVCache: row b's first counts[b] tokens go to slot slots[b] at
    positions starts[b] onwards; the rest of the row is padding, neither stored nor attended to.

    `uniform` (every row fed `width` tokens from one start, into consecutive slots) writes and reads slices,
    and attention uses its causal kernels; otherwise `mask` (B, 1, T, L) lets each query see its own slot's
    positions up to itself, and `positions` (B, T) are the tokens' positions for RoPE.
    """

    def __init__(
        self, slots: list[int], counts: list[int], starts: list[int], width: int, device: torch.device
    ) -> None:
        self.slots, self.counts, self.starts, self.width = slots, counts, starts, width
        self.first, self.last = slots[0], slots[0] + len(slots)
        self.contiguous = slots == list(range(self.first, self.last))
        self.uniform = self.contiguous and len(set(starts)) == 1 and all(count == width for count in counts)
        self.span = max(start + count for start, count in zip(starts, counts, strict=True))
        self.positions = self.mask = self.last_index = None
        if self.uniform:  # slices do it all: no index tensors to build (nor copy to the device)
            return
        self.slot_index = torch.tensor(slots, device=device)
        offsets = torch.arange(width, device=device)
        starts_t = torch.tensor(starts, device=device)
        positions = starts_t[:, None] + offsets[None, :]
        # Padding positions may pass the cache's end; they are clamped only so RoPE has a row to look up.
        self.positions = positions.clamp(max=self.span - 1)
        self.mask = (torch.arange(self.span, device=device)[None, None, :] <= positions[:, :, None])[:, None]
        self.last_index = torch.tensor(counts, device=device) - 1
        rows = [(row, column) for row, count in enumerate(counts) for column in range(count)]
        self.write_rows = torch.tensor([row for row, _ in rows], device=device)
        self.write_columns = torch.tensor([column for _, column in rows], device=device)
        self.write_slots = self.slot_index[self.write_rows]
        self.write_positions = starts_t[self.write_rows] + self.write_columns


class MultiHeadSelfAttention(nn.Module):
    """Causal multi-head self-attention with optional RoPE on queries and keys.

    q_proj and output_proj are d_model × d_model; the heads split d_model evenly. With grouped-query
    attention (`num_kv_heads` < num_heads) k_proj and v_proj have num_kv_heads · head_dim rows, and query
    head h attends with key/value head h // (num_heads / num_kv_heads), as in HF Llama; the KV cache holds
    only the num_kv_heads heads.
    `qk_norm` adds an RMSNorm over each head's query and key (gains `q_norm`, `k_norm` of size head_dim,
    shared by the heads) before RoPE: it bounds the attention logits, a common stabiliser at high lr.
    `fused` (default True) computes attention with torch.nn.functional.scaled_dot_product_attention;
    False uses this module's own `scaled_dot_product_attention`. Both give the same numbers (tested).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        rope: RotaryPositionalEmbedding | None = None,
        fused: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        num_kv_heads: int | None = None,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide d_model ({d_model})")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads ({num_kv_heads}) must divide num_heads ({num_heads})")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.fused = fused
        self.rope = rope
        kv_dim = num_kv_heads * (d_model // num_heads)
        self.q_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.k_proj = Linear(d_model, kv_dim, device=device, dtype=dtype)
        self.v_proj = Linear(d_model, kv_dim, device=device, dtype=dtype)
        self.output_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        head_dim = d_model // num_heads
        self.q_norm = RMSNorm(head_dim, device=device, dtype=dtype) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, device=device, dtype=dtype) if qk_norm else None

    def forward(
        self,
        x: Tensor,
        kv_cache: KVCache | None = None,
        layer_index: int = 0,
        rope_tables: tuple[Tensor, Tensor] | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """(batch, seq, d_model) -> (batch, seq, d_model).

        With a kv_cache (planned by the model: KVCache.begin), x holds each row's next tokens; their keys
        and values are stored in the cache under `layer_index` and the queries attend to the cached positions.
        `rope_tables`: RoPE's (cos, sin) rows for x's positions, as the model looks them up once for all
        layers; without them this module looks them up for positions 0 … T-1 itself. `attn_mask`
        (B, 1, T, keys) bool replaces the causal mask (True: may attend), as for documents packed in a row
        (lmkit.model.documents) or rows of a KV cache that hold different numbers of positions.
        """
        # Three products, not one with the weights concatenated: concatenating copies the three matrices on
        # every call, which is slower for training and 2-3x slower per decoded token (benchmarks/qkv_projection.py).
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = rearrange(q, "b t (h d) -> b h t d", h=self.num_heads)
        k, v = (rearrange(part, "b t (h d) -> b h t d", h=self.num_kv_heads) for part in (k, v))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            tables = rope_tables if rope_tables is not None else self.rope.tables(0, x.shape[1])
            q, k = rotate(q, tables), rotate(k, tables)
        if kv_cache is not None:
            k, v = kv_cache.store(layer_index, k, v)
        out = self._attend(q, k, v, attn_mask)
        return self.output_proj(rearrange(out, "b h t d -> b t (h d)"))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Causal attention of the queries, the last q.shape[-2] positions, over all keys (or attention as
        `attn_mask` allows).

        With grouped-query attention the fused path lets SDPA map query heads to their key/value head
        (enable_gqa) instead of copying the keys and values (and so the KV cache) num_heads / num_kv_heads
        times per layer; the written-out path repeats them.
        """
        num_queries, num_keys = q.shape[-2], k.shape[-2]
        if not self.fused:
            groups = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            mask = causal_mask(num_queries, num_keys, q.device) if attn_mask is None else attn_mask
            return scaled_dot_product_attention(q, k, v, mask)
        gqa = self.num_kv_heads != self.num_heads
        if attn_mask is not None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=gqa)
        if num_queries == num_keys:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        if num_queries == 1:  # one new token sees everything cached
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        # is_causal aligns the mask top-left, which is wrong when keys outnumber queries.
        mask = causal_mask(num_queries, num_keys, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
