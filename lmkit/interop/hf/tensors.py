"""The tensor mapping between lmkit's TransformerLM and HF's LlamaForCausalLM: names, shapes and the q/k row order.

lmkit's RoPE rotates the pairs of dims (2k, 2k+1) of each head, HF Llama's rotates (k, k + d/2). Reordering
each head's q_proj and k_proj rows from [0, 1, 2, 3, ...] to [0, 2, 4, ..., 1, 3, 5, ...] makes HF's halves
exactly lmkit's pairs, so q·k, and every logit, is unchanged; import applies the inverse. lmkit's names and
shapes come from lmkit.model.names; this module adds only HF's name for each.
"""

from __future__ import annotations

import re

import torch

from lmkit.model.config import ModelConfig
from lmkit.model.names import (
    ATTN_NORM,
    EMBEDDINGS,
    FFN_NORM,
    FFN_W1,
    FFN_W2,
    FFN_W3,
    FINAL_NORM,
    K_PROJ,
    LM_HEAD,
    OUTPUT_PROJ,
    Q_PROJ,
    V_PROJ,
    parameter_shapes,
    split_block_name,
)

# Per block: lmkit's name inside the block -> HF's after "model.layers.{i}.".
_BLOCK_NAMES = {
    ATTN_NORM: "input_layernorm.weight",
    FFN_NORM: "post_attention_layernorm.weight",
    Q_PROJ: "self_attn.q_proj.weight",
    K_PROJ: "self_attn.k_proj.weight",
    V_PROJ: "self_attn.v_proj.weight",
    OUTPUT_PROJ: "self_attn.o_proj.weight",
    FFN_W1: "mlp.gate_proj.weight",
    FFN_W3: "mlp.up_proj.weight",
    FFN_W2: "mlp.down_proj.weight",
}
_TOP_NAMES = {EMBEDDINGS: "model.embed_tokens.weight", FINAL_NORM: "model.norm.weight", LM_HEAD: "lm_head.weight"}
# Older HF checkpoints also store RoPE's inverse frequencies; they are rebuilt from rope_theta, never read.
_IGNORED_HF_NAMES = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


def is_ignored_hf_name(name: str) -> bool:
    """Whether a tensor of an HF Llama folder is one lmkit rebuilds rather than reads (RoPE's inv_freq)."""
    return _IGNORED_HF_NAMES.fullmatch(name) is not None


def interleaved_to_halves(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """q_proj/k_proj rows from lmkit's RoPE layout (pairs 2k, 2k+1) to HF Llama's (halves k, k + d/2), per head.

    `weight` is (heads · d, d_model); each head's rows [0, 1, 2, 3, ...] become [0, 2, 4, ..., 1, 3, 5, ...].
    """
    rows, cols = weight.shape
    return weight.reshape(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def halves_to_interleaved(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of `interleaved_to_halves`: HF Llama's q_proj/k_proj rows in lmkit's order."""
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_name(name: str) -> str:
    """The HF LlamaForCausalLM name of an lmkit state-dict name."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    layer, inner = split_block_name(name)
    return f"model.layers.{layer}.{_BLOCK_NAMES[inner]}"


def _rope_heads(name: str, config: ModelConfig) -> int | None:
    """How many heads' rows `name` holds if RoPE rotates them (q_proj, k_proj), else None."""
    block = split_block_name(name)
    return {Q_PROJ: config.num_heads, K_PROJ: config.num_kv_heads}.get(block[1]) if block else None


def to_hf_state(state: dict[str, torch.Tensor], config: ModelConfig, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """lmkit's state dict as HF Llama's: renamed, q/k rows permuted, in `dtype`.

    A tied LM head is left out: HF rebuilds it from the embeddings when tie_word_embeddings is true (and
    safetensors refuses two names for one tensor), so no two tensors share memory and none is copied needlessly.
    """
    out = {}
    for name in parameter_shapes(config):
        if name == LM_HEAD and config.tie_embeddings:
            continue
        tensor = state[name]
        if heads := _rope_heads(name, config):
            tensor = interleaved_to_halves(tensor, heads)
        out[hf_name(name)] = tensor.to(dtype).contiguous()
    return out


def from_hf_state(hf_state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """HF Llama's state dict (already checked complete) as lmkit's, in float32, q/k rows back in lmkit's order."""
    state = {}
    for name in parameter_shapes(config):
        source = hf_name(EMBEDDINGS if name == LM_HEAD and config.tie_embeddings else name)
        tensor = hf_state[source].to(torch.float32)
        if heads := _rope_heads(name, config):
            tensor = halves_to_interleaved(tensor, heads)
        state[name] = tensor.contiguous()
    return state


def expected_hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor a LlamaForCausalLM folder of this config holds (no lm_head when tied)."""
    shapes = parameter_shapes(config)
    return {hf_name(name): shape for name, shape in shapes.items() if not (name == LM_HEAD and config.tie_embeddings)}
