"""Hugging Face Llama folders: export an lmkit checkpoint as a `LlamaForCausalLM`, and import one back.

    from lmkit.interop.hf import export_hf, import_hf
    export_hf("runs/tinystories/best.pt", "tinystories-hf")          # transformers loads the folder
    import_hf("tinystories-hf", "back.pt")                           # lmkit generate / train.init_from read it

The names map one to one (DESIGN.md, "Hugging Face Llama mapping"). The one change to the numbers is the
order of the q_proj and k_proj rows: lmkit's RoPE rotates the pairs of dims (2k, 2k+1) of each head, HF
Llama's rotates (k, k + d/2). Reordering each head's rows from [0, 1, 2, 3, ...] to [0, 2, 4, ..., 1, 3,
5, ...] makes HF's halves exactly lmkit's pairs, so q·k, and every logit, is unchanged; import applies the
inverse. Nothing here imports transformers: config.json and the tokenizer files are plain JSON, and the
weights are read and written with the `safetensors` package.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from lmkit.checkpoint import END_OF_TEXT, load_inference_checkpoint, parameter_count, write_checkpoint
from lmkit.errors import InputError, validation_error_message
from lmkit.model.config import ModelConfig
from lmkit.progress import progress_bar

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # transformers' save_pretrained default ("5GB")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# ModelConfig settings HF Llama has no way to express: (field, the value Llama needs, what Llama does).
# One more unsupported switch is one more row.
HF_LLAMA_REQUIRES: list[tuple[str, object, str]] = [
    ("norm", "pre", 'HF Llama normalizes before each sublayer (norm = "pre")'),
    ("position", "rope", 'HF Llama always applies rotary embeddings (position = "rope")'),
    ("ffn", "swiglu", 'HF Llama\'s MLP is the gated SwiGLU (ffn = "swiglu")'),
    ("qk_norm", False, "HF Llama has no norm on queries and keys (qk_norm = false)"),
]

# Per block: lmkit's name after "layers.{i}." -> HF's after "model.layers.{i}.".
_BLOCK_NAMES = {
    "ln1.weight": "input_layernorm.weight",
    "ln2.weight": "post_attention_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.output_proj.weight": "self_attn.o_proj.weight",
    "ffn.w1.weight": "mlp.gate_proj.weight",
    "ffn.w3.weight": "mlp.up_proj.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "token_embeddings.weight": "model.embed_tokens.weight",
    "ln_final.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
# Older HF checkpoints also store RoPE's inverse frequencies; they are rebuilt from rope_theta, never read.
_IGNORED_HF_NAMES = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


# --- the numbers ----------------------------------------------------------------------------------------------


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
    layer, _, rest = name.removeprefix("layers.").partition(".")
    return f"model.layers.{layer}.{_BLOCK_NAMES[rest]}"


def lmkit_names(config: ModelConfig) -> list[str]:
    """Every lmkit state-dict name of a Llama-expressible model (lm_head.weight only once when tied)."""
    names = ["token_embeddings.weight"]
    names += [f"layers.{i}.{rest}" for i in range(config.num_layers) for rest in _BLOCK_NAMES]
    names += ["ln_final.weight", "lm_head.weight"]
    return names


def to_hf_state(state: dict[str, torch.Tensor], config: ModelConfig, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """lmkit's state dict as HF Llama's: renamed, q/k rows permuted, in `dtype`.

    A tied LM head is left out: HF rebuilds it from the embeddings when tie_word_embeddings is true (and
    safetensors refuses two names for one tensor), so no two tensors share memory and none is copied needlessly.
    """
    out = {}
    for name in lmkit_names(config):
        if name == "lm_head.weight" and config.tie_embeddings:
            continue
        tensor = state[name]
        if name.endswith("attn.q_proj.weight"):
            tensor = interleaved_to_halves(tensor, config.num_heads)
        elif name.endswith("attn.k_proj.weight"):
            tensor = interleaved_to_halves(tensor, config.num_kv_heads)
        out[hf_name(name)] = tensor.to(dtype).contiguous()
    return out


def from_hf_state(hf_state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """HF Llama's state dict (already checked complete) as lmkit's, in float32, q/k rows back in lmkit's order."""
    state = {}
    for name in lmkit_names(config):
        source = "model.embed_tokens.weight" if name == "lm_head.weight" and config.tie_embeddings else hf_name(name)
        tensor = hf_state[source].to(torch.float32)
        if name.endswith("attn.q_proj.weight"):
            tensor = halves_to_interleaved(tensor, config.num_heads)
        elif name.endswith("attn.k_proj.weight"):
            tensor = halves_to_interleaved(tensor, config.num_kv_heads)
        state[name] = tensor.contiguous()
    return state


def expected_hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor a LlamaForCausalLM folder of this config holds."""
    d, kv, f, vocab = config.d_model, config.num_kv_heads * config.head_dim, config.d_ff, config.vocab_size
    block = {
        "ln1.weight": (d,),
        "ln2.weight": (d,),
        "attn.q_proj.weight": (d, d),
        "attn.k_proj.weight": (kv, d),
        "attn.v_proj.weight": (kv, d),
        "attn.output_proj.weight": (d, d),
        "ffn.w1.weight": (f, d),
        "ffn.w3.weight": (f, d),
        "ffn.w2.weight": (d, f),
    }
    shapes = {"model.embed_tokens.weight": (vocab, d), "model.norm.weight": (d,)}
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (vocab, d)
    for i in range(config.num_layers):
        shapes.update({hf_name(f"layers.{i}.{rest}"): shape for rest, shape in block.items()})
    return shapes


# --- config.json and the tokenizer files ------------------------------------------------------------------


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
    """tokenizer_config.json: a plain fast tokenizer over tokenizer.json, adding no BOS or EOS."""
    eos = END_OF_TEXT if END_OF_TEXT in special_tokens else None
    return {
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


# --- export ------------------------------------------------------------------------------------------------


def shard(state: dict[str, torch.Tensor], max_shard_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Tensors in order, cut into consecutive groups of at most max_shard_bytes (a bigger tensor alone)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        if shards[-1] and size + tensor.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += tensor.nbytes
    return shards


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.nbytes for t in tensors)


def write_weights(
    folder: Path, state: dict[str, torch.Tensor], max_shard_bytes: int, progress: bool = False
) -> list[str]:
    """model.safetensors, or model-0000i-of-0000n.safetensors and the index transformers reads; the file names."""
    from safetensors.torch import save_file

    shards = shard(state, max_shard_bytes)
    names = (
        [WEIGHTS_FILE]
        if len(shards) == 1
        else [f"model-{number:05d}-of-{len(shards):05d}.safetensors" for number in range(1, len(shards) + 1)]
    )
    total = _nbytes(state.values())
    with progress_bar("Writing weights", total=total, unit="MB", scale=1e6, enabled=progress) as bar:
        for name, part in zip(names, shards, strict=True):
            save_file(part, folder / name, metadata={"format": "pt"})
            bar.advance(_nbytes(part.values()))
    if len(shards) == 1:
        return names
    weight_map = {tensor: name for name, part in zip(names, shards, strict=True) for tensor in part}
    _write_json(folder / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return [*names, INDEX_FILE]


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def check_output_folder(out: Path, force: bool) -> None:
    """InputError unless `out` can take an export: new, or empty, or any folder with --force."""
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} is a file; give a folder name")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(f"output folder {out} exists and is not empty; choose a new folder or pass --force")
    if not out.parent.is_dir():
        raise InputError(f"the folder {out.parent} that would hold {out.name} does not exist; create it first")


def _stale_weight_files(out: Path) -> Iterator[Path]:
    """Weight files of an earlier export in `out`, which a new export must not leave beside its own."""
    yield from out.glob("model*.safetensors")
    yield from out.glob(INDEX_FILE)


def _move_into_place(staging: Path, out: Path) -> None:
    """Put the finished files in `out`: one rename for a new or empty folder; file by file over --force."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        staging.rename(out)
        return
    for stale in _stale_weight_files(out):
        stale.unlink()
    for item in staging.iterdir():
        os.replace(item, out / item.name)
    staging.rmdir()


def export_hf(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    dtype: str = "float32",
    force: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: bool = False,
) -> dict[str, object]:
    """Write an lmkit checkpoint as a Hugging Face LlamaForCausalLM folder; return what was written.

    The folder holds the weights (safetensors, sharded with an index above max_shard_bytes), config.json,
    generation_config.json, tokenizer.json and tokenizer_config.json. It is built in a temporary folder
    beside `out` and renamed into place, so a failure leaves nothing behind. InputError for a bad
    checkpoint, a dtype other than float32/bfloat16/float16, a model HF Llama cannot express, or an
    output folder that exists and is not empty (unless `force`). `progress` draws a bar on stderr.
    """
    from lmkit.tokenizer.formats import from_hf_json, special_token_ids

    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if max_shard_bytes <= 0:
        raise InputError(f"the shard size must be positive, got {max_shard_bytes} bytes")
    out = Path(out)
    stored = load_inference_checkpoint(checkpoint)
    config = stored.model_config
    check_exportable(config)
    check_output_folder(out, force)
    tokenizer_obj = json.loads(stored.tokenizer_json)
    vocab, _, special_tokens = from_hf_json(tokenizer_obj, source=f"the tokenizer in {checkpoint}")
    special_ids = special_token_ids(vocab, special_tokens)
    eos_id = special_ids.get(END_OF_TEXT)
    state = to_hf_state(stored.state_dict, config, DTYPES[dtype])
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    # mkdtemp makes the folder 0700; give it what a plain mkdir would (0777 less the umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    try:
        files = write_weights(staging, state, max_shard_bytes, progress)
        _write_json(staging / "config.json", hf_config(config, eos_id, dtype))
        _write_json(staging / "generation_config.json", {"bos_token_id": None, "eos_token_id": eos_id})
        _write_json(staging / "tokenizer.json", tokenizer_obj)
        _write_json(
            staging / "tokenizer_config.json", tokenizer_config(special_tokens, special_ids, config.context_length)
        )
        _move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "checkpoint": str(checkpoint),
        "out": str(out),
        "dtype": dtype,
        "weight_files": files,
        "files": sorted(p.name for p in out.iterdir()),
        "parameters": sum(t.numel() for t in state.values()),
        "step": stored.step,
    }


# --- import ------------------------------------------------------------------------------------------------


def _read_json_file(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path.parent} has no {path.name}; is it a Hugging Face model folder?")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{what} {path} is not valid JSON ({err})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{what} {path} is not a JSON object")
    return obj


def check_source_folder(src: Path) -> None:
    """InputError for a path that is not a local folder; a Hub id gets told to download first."""
    if src.is_dir():
        return
    if src.exists():
        raise InputError(f"{src} is a file; give the folder holding config.json and the safetensors weights")
    looks_like_hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", str(src)) is not None
    if looks_like_hub_id:
        raise InputError(
            f"{src} is not a local folder; lmkit does not download from the Hub: run "
            f"`huggingface-cli download {src} --local-dir DIR` first, then import DIR"
        )
    raise InputError(f"model folder {src} does not exist")


def _rope_theta(raw: dict[str, Any], source: str) -> float:
    """rope_theta from config.json in either layout, refusing RoPE scalings lmkit does not implement."""
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise InputError(f"{source}: rope_parameters is not an object")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise InputError(f"{source}: RoPE scaling {rope_type!r} is not supported; lmkit implements plain RoPE only")
    return float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))


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


def weight_files(src: Path) -> list[Path]:
    """The safetensors files of a folder: the shards its index names, or model.safetensors."""
    index = src / INDEX_FILE
    if index.is_file():
        weight_map = _read_json_file(index, "index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise InputError(f"{index} has no weight_map")
        return [src / name for name in dict.fromkeys(weight_map.values())]
    if (src / WEIGHTS_FILE).is_file():
        return [src / WEIGHTS_FILE]
    if any(src.glob("*.bin")) or any(src.glob("*.pt")):
        raise InputError(
            f"{src} holds PyTorch pickle weights, which lmkit does not load (they can run code); "
            "convert them to safetensors first (e.g. save_pretrained(..., safe_serialization=True))"
        )
    raise InputError(f"{src} has no {WEIGHTS_FILE} or {INDEX_FILE}")


def read_hf_weights(src: Path, config: ModelConfig, progress: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor the config needs, from the folder's safetensors files, checked by name and shape first
    (from the file headers, so a bad folder is refused before gigabytes are read)."""
    from safetensors import safe_open

    located = _locate_tensors(src, config)
    total = sum(path.stat().st_size for path in set(located.values()))
    state: dict[str, torch.Tensor] = {}
    with progress_bar("Reading weights", total=total, unit="MB", scale=1e6, enabled=progress) as bar:
        for path in dict.fromkeys(located.values()):
            with safe_open(path, framework="pt") as handle:
                state.update({name: handle.get_tensor(name) for name, where in located.items() if where == path})
            bar.advance(path.stat().st_size)
    return state


def _locate_tensors(src: Path, config: ModelConfig) -> dict[str, Path]:
    """The file holding each tensor the config needs; InputError for an unreadable file or a missing, stray or
    misshapen tensor."""
    from safetensors import SafetensorError, safe_open

    expected = expected_hf_shapes(config)
    located: dict[str, Path] = {}
    for path in weight_files(src):
        if not path.is_file():
            raise InputError(f"{path} (named in {INDEX_FILE}) does not exist")
        try:
            with safe_open(path, framework="pt") as handle:
                for name in handle.keys():
                    if _IGNORED_HF_NAMES.fullmatch(name) or (name == "lm_head.weight" and config.tie_embeddings):
                        continue
                    if name not in expected:
                        raise InputError(
                            f"{path} holds {name}, which a Llama model of this config.json has no place for"
                        )
                    shape = tuple(handle.get_slice(name).get_shape())
                    if shape != expected[name]:
                        raise InputError(f"{name} is {shape} in {path}, but config.json makes it {expected[name]}")
                    located[name] = path
        except SafetensorError as err:
            raise InputError(f"{path} is not a readable safetensors file ({err})") from None
    missing = [name for name in expected if name not in located]
    if missing:
        raise InputError(f"{src} is missing the tensor {missing[0]}")
    return located


def _tokenizer_json(src: Path, vocab_size: int) -> str:
    """The folder's tokenizer.json, re-written in lmkit's layout; InputError if lmkit cannot encode like it."""
    from lmkit.tokenizer.formats import from_hf_json, to_hf_json

    path = src / "tokenizer.json"
    obj = _read_json_file(path, "tokenizer file")
    pre, model = obj.get("pre_tokenizer") or {}, obj.get("model") or {}
    gpt2_style = (
        model.get("type") == "BPE"
        and not model.get("byte_fallback")
        and obj.get("normalizer") is None
        and not model.get("ignore_merges")
        and model.get("continuing_subword_prefix") is None
        and model.get("end_of_word_suffix") is None
        and pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True)
        and not pre.get("add_prefix_space", False)
        and (obj.get("post_processor") or {}).get("type") in (None, "ByteLevel")
    )
    if not gpt2_style:
        raise InputError(
            f"{path} is not a GPT-2-style byte-level BPE (ByteLevel pre-tokenizer with the GPT-2 pattern, no "
            "normalizer, no added BOS): lmkit's tokenizer would give other ids. Import needs a tokenizer lmkit "
            "can represent"
        )
    vocab, merges, special_tokens = from_hf_json(obj, source=str(path))
    if max(vocab) >= vocab_size:
        raise InputError(f"{path} has ids up to {max(vocab)}, but config.json's vocab_size is {vocab_size}")
    return json.dumps(to_hf_json(vocab, merges, special_tokens), ensure_ascii=False)


def import_hf(
    src: str | os.PathLike,
    out: str | os.PathLike,
    force: bool = False,
    context_length: int | None = None,
    progress: bool = False,
) -> dict[str, object]:
    """Read a local Hugging Face Llama folder into an lmkit checkpoint (float32 weights); return what was read.

    The checkpoint holds the model, its config and the tokenizer, so `lmkit generate`, `lmkit ckpt info` and
    `train.init_from` (fine-tuning) take it. `context_length` overrides max_position_embeddings (a smaller
    one keeps RoPE tables and the KV cache small). InputError, before anything is written, for a missing
    folder, a Hub id, a non-Llama config, a missing or misshapen tensor, a tokenizer lmkit cannot represent,
    or an existing `out` (unless `force`). `progress` draws a bar on stderr.
    """
    from lmkit.fileio import check_output_path

    src, out = Path(src), Path(out)
    check_source_folder(src)
    check_output_path(out)
    if out.exists() and not force:
        raise InputError(f"{out} exists; choose a new name or pass --force to replace it")
    config = model_config_from_hf(
        _read_json_file(src / "config.json", "config"), str(src / "config.json"), context_length
    )
    tokenizer_json = _tokenizer_json(src, config.vocab_size)
    state = from_hf_state(read_hf_weights(src, config, progress), config)
    if config.tie_embeddings:
        state["token_embeddings.weight"] = state["lm_head.weight"]  # one tensor under both names, as the model has
    write_checkpoint(
        state,
        None,
        0,
        out,
        tokens_seen=0,
        config={"model": config.model_dump(mode="json")},
        tokenizer_json=tokenizer_json,
        imported_from=str(src),
    )
    return {"source": str(src), "out": str(out), "model": config.model_dump(), "parameters": parameter_count(state)}
