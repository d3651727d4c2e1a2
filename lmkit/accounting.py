"""Resource accounting for a Transformer LM, from its shape alone: parameters, FLOPs, training memory, time.

The formulas are in docs/accounting.md. A product of an (m x n) and an (n x p) matrix costs 2mnp FLOPs;
only matrix products are counted (elementwise work, norms and softmax are a rounding error beside them),
and attention is counted over the full T x T square, as the kernels compute it.
"""

from __future__ import annotations

import torch

from lmkit.errors import InputError
from lmkit.model.config import ModelConfig

FLOAT32_BYTES = 4
GB = 10**9
# --measure runs a forward pass on the meta device, block by block, at some tens of milliseconds a block:
# deeper than this it would take minutes (and a model this deep is no real design).
MEASURE_MAX_LAYERS = 1024

FLOP_LABELS = {
    "q_proj": "Q projection",
    "k_proj": "K projection",
    "v_proj": "V projection",
    "q_kT": "QKᵀ",
    "attn_v": "attention × V",
    "output_proj": "output projection",
    "ffn_w1": "FFN W1",
    "ffn_w3": "FFN W3",
    "ffn_w2": "FFN W2",
    "lm_head": "LM head",
}


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """Parameters by part, and their total. A tied LM head shares the embedding's matrix and counts 0."""
    d, layers, vocab = config.d_model, config.num_layers, config.vocab_size
    ffn_matrices = 3 if config.ffn == "swiglu" else 2
    qk_norm_gains = layers * 2 * config.head_dim if config.qk_norm else 0
    counts = {
        "embedding": vocab * d,
        "attention": layers * (2 * d * d + 2 * d * kv_width(config)),  # Q and output; K and V
        "ffn": layers * ffn_matrices * d * config.d_ff,
        "norms": (0 if config.norm == "none" else (2 * layers + 1) * d) + qk_norm_gains,
        "lm_head": 0 if config.tie_embeddings else vocab * d,
    }
    counts["total"] = sum(counts.values())
    return counts


def kv_width(config: ModelConfig) -> int:
    """Rows of k_proj and of v_proj: num_kv_heads · head_dim (d_model unless attention is grouped-query)."""
    return config.num_kv_heads * config.head_dim


def forward_flops(config: ModelConfig, seq_len: int, batch_size: int = 1) -> dict[str, int]:
    """FLOPs of each matrix product in one forward pass over batch_size sequences of seq_len, summed over
    the layers, and their total."""
    d, f, layers = config.d_model, config.d_ff, config.num_layers
    tokens = batch_size * seq_len
    projection = layers * 2 * tokens * d * d
    kv_projection = layers * 2 * tokens * d * kv_width(config)
    # Every head multiplies (T x d_k)(d_k x T) and (T x T)(T x d_k): 2 T² d_k each, H heads: 2 T² d.
    square = layers * batch_size * 2 * seq_len * seq_len * d
    flops = {
        "q_proj": projection,
        "k_proj": kv_projection,
        "v_proj": kv_projection,
        "q_kT": square,
        "attn_v": square,
        "output_proj": projection,
        "ffn_w1": layers * 2 * tokens * d * f,
    }
    if config.ffn == "swiglu":
        flops["ffn_w3"] = layers * 2 * tokens * d * f
    flops["ffn_w2"] = layers * 2 * tokens * f * d
    flops["lm_head"] = 2 * tokens * d * config.vocab_size
    flops["total"] = sum(flops.values())
    return flops


def train_step_flops(config: ModelConfig, seq_len: int, batch_size: int) -> int:
    """FLOPs of one training step: the forward pass and a backward pass of twice its cost."""
    return 3 * forward_flops(config, seq_len, batch_size)["total"]


def activation_floats(config: ModelConfig, seq_len: int) -> dict[str, int]:
    """Activations kept for the backward pass of one sequence, in numbers, by part, and their total."""
    t, d, f, layers = seq_len, config.d_model, config.d_ff, config.num_layers
    has_norm = config.norm != "none"
    ffn_outputs = 3 if config.ffn == "swiglu" else 2  # W1, SiLU (and W3), each t x d_ff
    floats = {
        # ln1 and ln2 keep their inputs; QK-norm keeps each head's queries and keys
        "norms": (layers * 2 * t * d if has_norm else 0)
        + (layers * t * (d + kv_width(config)) if config.qk_norm else 0),
        "qkv_proj": layers * t * (d + 2 * kv_width(config)),
        "q_kT": layers * config.num_heads * t * t,
        "softmax": layers * config.num_heads * t * t,
        "attn_v": layers * t * d,
        "output_proj": layers * t * d,
        "ffn": layers * (ffn_outputs * t * f + t * d),  # ... and W2, t x d
        "final_norm": t * d if has_norm else 0,
        "logits": t * config.vocab_size,
        "cross_entropy": t * config.vocab_size,
    }
    floats["total"] = sum(floats.values())
    return floats


def training_memory(config: ModelConfig, seq_len: int) -> dict[str, int]:
    """Bytes to train with AdamW in float32 as a·batch_size + b: b (`fixed`) holds the parameters, their
    gradients and AdamW's two moments; a (`activations_per_sequence`) the activations of one sequence."""
    params = parameter_counts(config)["total"] * FLOAT32_BYTES
    memory = {"parameters": params, "gradients": params, "optimizer_state": 2 * params}
    memory["fixed"] = sum(memory.values())
    memory["activations_per_sequence"] = activation_floats(config, seq_len)["total"] * FLOAT32_BYTES
    return memory


def kv_cache_bytes(config: ModelConfig, seq_len: int, batch_size: int = 1, bytes_per_value: int = 4) -> int:
    """Bytes of the generation KV cache for batch_size sequences of seq_len: a key and a value of
    num_kv_heads · head_dim numbers per token and layer (grouped-query attention divides it by
    num_heads / num_kv_heads)."""
    return 2 * config.num_layers * batch_size * seq_len * kv_width(config) * bytes_per_value


def max_batch_size(config: ModelConfig, seq_len: int, memory_bytes: float) -> int:
    """The largest batch whose training memory fits in memory_bytes (0 if not even the weights fit)."""
    memory = training_memory(config, seq_len)
    return max(0, int((memory_bytes - memory["fixed"]) // memory["activations_per_sequence"]))


def training_seconds(flops_per_step: int, steps: int, peak_tflops: float, mfu: float) -> float:
    """Wall-clock seconds for `steps` steps on an accelerator of peak_tflops running at utilisation mfu."""
    return steps * flops_per_step / (peak_tflops * 1e12 * mfu)


def measure_forward_flops(config: ModelConfig, seq_len: int, batch_size: int = 1) -> int:
    """Matrix-product FLOPs of one real forward pass, counted by torch's FlopCounterMode.

    The model lives on the meta device, which has shapes but no data, so even GPT-2 XL needs no memory.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from lmkit.model.transformer import TransformerLM

    model = TransformerLM(config, device="meta")
    token_ids = torch.zeros(batch_size, seq_len, dtype=torch.long, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(token_ids)
    return counter.get_total_flops()


def report(
    config: ModelConfig,
    batch_size: int = 1,
    seq_len: int | None = None,
    gpu_memory_gb: float = 80.0,
    steps: int | None = None,
    peak_tflops: float | None = None,
    mfu: float = 0.5,
    measure: bool = False,
) -> dict[str, object]:
    """Every figure `lmkit model flops` prints, as one dict (the --json output).

    seq_len defaults to the context length. The training time is included when `steps` is given, and
    then needs `peak_tflops`. Raises InputError on sizes that make no sense.
    """
    seq_len = config.context_length if seq_len is None else seq_len
    _check(batch_size, seq_len, config, gpu_memory_gb, steps, peak_tflops, mfu)
    params = parameter_counts(config)
    flops = forward_flops(config, seq_len, batch_size)
    step_flops = train_step_flops(config, seq_len, batch_size)
    memory = training_memory(config, seq_len)
    facts: dict[str, object] = {
        "model": config.model_dump(),
        "batch_size": batch_size,
        "seq_len": seq_len,
        "parameters": params,
        "parameter_memory_bytes": params["total"] * FLOAT32_BYTES,
        "forward_flops": flops,
        "forward_flops_share": {name: n / flops["total"] for name, n in flops.items() if name != "total"},
    }
    if measure:
        if config.num_layers > MEASURE_MAX_LAYERS:
            raise InputError(
                f"--measure runs the model block by block and is limited to {MEASURE_MAX_LAYERS:,} layers "
                f"(this one has {config.num_layers:,}); drop --measure, the formulas need no model"
            )
        facts["forward_flops_measured"] = measure_forward_flops(config, seq_len, batch_size)
    facts["train_step_flops"] = step_flops
    facts["training_memory_bytes"] = {
        **memory,
        "total": memory["fixed"] + batch_size * memory["activations_per_sequence"],
    }
    facts["kv_cache_bytes"] = {
        "float32": kv_cache_bytes(config, seq_len, batch_size, FLOAT32_BYTES),
        "bfloat16": kv_cache_bytes(config, seq_len, batch_size, 2),
    }
    facts["gpu_memory_gb"] = gpu_memory_gb
    facts["max_batch_size"] = max_batch_size(config, seq_len, gpu_memory_gb * GB)
    if steps is not None:
        seconds = training_seconds(step_flops, steps, peak_tflops, mfu)
        facts["training_time"] = {
            "steps": steps,
            "peak_tflops": peak_tflops,
            "mfu": mfu,
            "seconds": seconds,
            "days": seconds / 86400,
        }
    return facts


def _check(
    batch_size: int,
    seq_len: int,
    config: ModelConfig,
    gpu_memory_gb: float,
    steps: int | None,
    peak_tflops: float | None,
    mfu: float,
) -> None:
    """InputError naming the first option that makes no sense."""
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    if not 1 <= seq_len <= config.context_length:
        raise InputError(f"sequence length must be in 1 … {config.context_length} (the context), got {seq_len}")
    if gpu_memory_gb <= 0:
        raise InputError(f"GPU memory must be positive, got {gpu_memory_gb} GB")
    if steps is not None and steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    if steps is not None and peak_tflops is None:
        raise InputError(
            "a training time needs the accelerator's peak: give --peak-tflops (e.g. 989 for an H100, bf16)"
        )
    if peak_tflops is not None and peak_tflops <= 0:
        raise InputError(f"peak TFLOP/s must be positive, got {peak_tflops}")
    if not 0 < mfu <= 1:
        raise InputError(f"MFU must be in (0, 1], got {mfu}")
