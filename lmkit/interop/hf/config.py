"""config.json and the tokenizer files of an HF Llama folder, to and from lmkit's ModelConfig and tokenizer."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from lmkit.chat import CHAT_TEMPLATE, CHAT_TOKENS
from lmkit.checkpoint import END_OF_TEXT
from lmkit.errors import InputError, validation_error_message
from lmkit.model.config import ModelConfig
from lmkit.tokenizer.tokenizer import Tokenizer

# ModelConfig settings HF Llama has no way to express: (field, the value Llama needs, what Llama does).
# One more unsupported switch is one more row.
HF_LLAMA_REQUIRES: list[tuple[str, object, str]] = [
    ("norm", "pre", 'HF Llama normalizes before each sublayer (norm = "pre")'),
    ("position", "rope", 'HF Llama always applies rotary embeddings (position = "rope")'),
    ("ffn", "swiglu", 'HF Llama\'s MLP is the gated SwiGLU (ffn = "swiglu")'),
    ("qk_norm", False, "HF Llama has no norm on queries and keys (qk_norm = false)"),
]

def check_exportable(config: ModelConfig) -> None:
    """InputError naming the first setting HF Llama cannot express (see HF_LLAMA_REQUIRES)."""
    for field, needed, why in HF_LLAMA_REQUIRES:
        value = getattr(config, field)
        if value != needed:
            raise InputError(f"cannot export to HF Llama: this model has {field} = {value!r}, but {why}")


def hf_config(config: ModelConfig, eos_id: int | None, dtype: str) -> dict[str, Any]:
    """config.json for LlamaForCausalLM, readable by transformers 4.x (rope_theta) and 5.x (rope_parameters)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.context_length,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": 0.02,
        "use_cache": True,
        # lmkit prepends no beginning-of-sequence token; Llama's defaults (1 and 2) would be wrong ids here.
        "bos_token_id": None,
        "eos_token_id": eos_id,
        "pad_token_id": None,
        "torch_dtype": dtype,
        "dtype": dtype,
    }


def tokenizer_config(special_tokens: list[str], special_ids: dict[str, int], context_length: int) -> dict[str, Any]:
    """tokenizer_config.json: a plain fast tokenizer over tokenizer.json, adding no BOS or EOS; with the chat
    template's tokens, the template itself (lmkit.chat), so `apply_chat_template` renders as lmkit does."""
    eos = END_OF_TEXT if END_OF_TEXT in special_tokens else None
    chat = {"chat_template": CHAT_TEMPLATE} if all(token in special_tokens for token in CHAT_TOKENS) else {}
    return {
        **chat,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": context_length,
        "bos_token": None,
        "eos_token": eos,
        "unk_token": None,
        "pad_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(special_ids[token]): {
                "content": token,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for token in special_tokens
        },
    }


def _rope_theta(raw: dict[str, Any], source: str) -> float:
    """rope_theta from config.json, reading every place a layout can state RoPE's parameters: the top-level
    `rope_theta` and `partial_rotary_factor`, transformers 5's `rope_parameters` and 4's `rope_scaling`.

    Refused: a RoPE scaling other than plain RoPE in any of them (lmkit's logits would differ from the
    model's), a partial rotary factor other than 1, and a value two places state differently.
    """
    tables = {}
    for key in ("rope_parameters", "rope_scaling"):
        table = raw.get(key)
        if table is None:
            continue
        if not isinstance(table, dict):
            raise InputError(f"{source}: {key} is not an object")
        rope_type = table.get("rope_type", table.get("type", "default"))
        if rope_type != "default":
            raise InputError(
                f"{source}: {key} asks for RoPE scaling {rope_type!r}; lmkit implements plain RoPE only, "
                "so the imported model's outputs would differ"
            )
        tables[key] = table
    theta = _stated_once(raw, tables, "rope_theta", source, default=10000.0)
    if _stated_once(raw, tables, "partial_rotary_factor", source, default=1.0) != 1.0:
        raise InputError(f"{source}: partial_rotary_factor is not 1; lmkit rotates every dimension of a head")
    return theta


def _stated_once(raw: dict[str, Any], tables: dict[str, dict], field: str, source: str, default: float) -> float:
    """The value of `field` wherever config.json states it (top level or a RoPE table), which must be a number
    and the same everywhere; `default` where it is stated nowhere."""
    stated = {field: raw.get(field), **{f"{key}.{field}": table.get(field) for key, table in tables.items()}}
    values = {}
    for where, value in stated.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{source}: {where} is not a number")
        values[where] = float(value)
    if len(set(values.values())) > 1:
        places = ", ".join(f"{where} = {value:g}" for where, value in values.items())
        raise InputError(f"{source} states {field} twice with different values ({places}); which one is meant?")
    return next(iter(values.values()), default)


def model_config_from_hf(raw: dict[str, Any], source: str, context_length: int | None = None) -> ModelConfig:
    """The lmkit ModelConfig of a Llama config.json; InputError for anything lmkit's model cannot express."""
    architectures = raw.get("architectures") or []
    if raw.get("model_type") != "llama" or any(a != "LlamaForCausalLM" for a in architectures):
        kind = raw.get("model_type") or ", ".join(architectures) or "unknown"
        raise InputError(
            f"{source} describes a {kind!r} model; only Llama-architecture models (LlamaForCausalLM) import"
        )
    refused = [
        ("hidden_act", "silu"),
        ("attention_bias", False),
        ("mlp_bias", False),
    ]
    for key, needed in refused:
        if raw.get(key, needed) != needed:
            raise InputError(f"{source}: {key} = {raw[key]!r} is not supported (lmkit's Llama needs {needed!r})")
    required = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]
    missing = [key for key in required if not isinstance(raw.get(key), int)]
    if missing:
        raise InputError(f"{source}: {missing[0]} is missing or not an integer")
    heads = raw["num_attention_heads"]
    head_dim = raw.get("head_dim") or raw["hidden_size"] // heads
    if head_dim * heads != raw["hidden_size"]:
        raise InputError(
            f"{source}: head_dim {head_dim} x {heads} heads is not hidden_size {raw['hidden_size']}; "
            "lmkit's attention needs d_model = num_heads x head_dim"
        )
    fields = {
        "vocab_size": raw["vocab_size"],
        "context_length": context_length or raw.get("max_position_embeddings", 2048),
        "d_model": raw["hidden_size"],
        "num_layers": raw["num_hidden_layers"],
        "num_heads": heads,
        "num_kv_heads": raw.get("num_key_value_heads") or heads,
        "d_ff": raw["intermediate_size"],
        "rope_theta": _rope_theta(raw, source),
        "norm_eps": raw.get("rms_norm_eps", 1e-6),  # LlamaConfig's default
        "tie_embeddings": bool(raw.get("tie_word_embeddings", False)),
    }
    try:
        return ModelConfig(**fields)
    except ValidationError as err:
        raise InputError(f"{source}: {validation_error_message(err)}") from None


def lmkit_tokenizer_json(tokenizer: Tokenizer, source: str, vocab_size: int) -> str:
    """A tokenizer read from an HF folder (or given beside it) as the tokenizer.json text a checkpoint stores;
    InputError if it holds ids beyond config.json's vocab_size."""
    if tokenizer.vocab_size > vocab_size:
        raise InputError(
            f"{source} has ids up to {tokenizer.vocab_size - 1}, but config.json's vocab_size is {vocab_size}"
        )
    return tokenizer.to_json()
