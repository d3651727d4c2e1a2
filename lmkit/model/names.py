"""The names and shapes of a TransformerLM's parameters, as one spec.

Every place that needs a parameter's name reads it here: the checkpoint checks, the optimizer's choice of
matrices for Muon, and the Hugging Face mapping. `parameter_shapes(config)` lists the state dict of
`TransformerLM(config)` (names in its order, with their shapes; tests/test_model.py holds it to the model).
"""

from __future__ import annotations

from lmkit.model.config import ModelConfig

EMBEDDINGS = "token_embeddings.weight"
FINAL_NORM = "ln_final.weight"
LM_HEAD = "lm_head.weight"
BLOCKS = "layers"  # block i's parameters are named f"layers.{i}.{name in the block}"

# Names inside a block.
ATTN_NORM, FFN_NORM = "ln1.weight", "ln2.weight"
Q_PROJ, K_PROJ, V_PROJ, OUTPUT_PROJ = (f"attn.{p}_proj.weight" for p in ("q", "k", "v", "output"))
Q_NORM, K_NORM = "attn.q_norm.weight", "attn.k_norm.weight"
FFN_W1, FFN_W2, FFN_W3 = "ffn.w1.weight", "ffn.w2.weight", "ffn.w3.weight"


def block_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The parameters of one block, in state-dict order: name inside the block -> shape."""
    d, kv, f = config.d_model, config.num_kv_heads * config.head_dim, config.d_ff
    norm = config.norm != "none"
    shapes: dict[str, tuple[int, ...]] = {ATTN_NORM: (d,)} if norm else {}
    shapes |= {Q_PROJ: (d, d), K_PROJ: (kv, d), V_PROJ: (kv, d), OUTPUT_PROJ: (d, d)}
    if config.qk_norm:
        shapes |= {Q_NORM: (config.head_dim,), K_NORM: (config.head_dim,)}
    if norm:
        shapes[FFN_NORM] = (d,)
    shapes |= {FFN_W1: (f, d), FFN_W2: (d, f)}
    if config.ffn == "swiglu":
        shapes[FFN_W3] = (f, d)
    return shapes


def block_name(layer: int, name: str) -> str:
    """The full name of parameter `name` of block `layer`."""
    return f"{BLOCKS}.{layer}.{name}"


def split_block_name(name: str) -> tuple[int, str] | None:
    """(block index, name inside the block) of a block parameter's full name; None for any other name."""
    prefix, _, rest = name.partition(".")
    index, _, inner = rest.partition(".")
    if prefix != BLOCKS or not index.isdigit() or not inner:
        return None
    return int(index), inner


def parameter_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every name in the state dict of `TransformerLM(config)` with its shape, in state-dict order.

    A tied model lists both EMBEDDINGS and LM_HEAD (one tensor under two names, as its state dict has).
    """
    vocab, d = config.vocab_size, config.d_model
    shapes: dict[str, tuple[int, ...]] = {EMBEDDINGS: (vocab, d)}
    block = block_shapes(config)
    for layer in range(config.num_layers):
        shapes |= {block_name(layer, name): shape for name, shape in block.items()}
    if config.norm != "none":
        shapes[FINAL_NORM] = (d,)
    shapes[LM_HEAD] = (vocab, d)
    return shapes
