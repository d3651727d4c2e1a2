"""Checkpoints and run folders: the one place that reads, writes and validates them, for training,
generation, evaluation, serving and export alike.

A checkpoint is one `torch.save` zip of tensors and plain Python types, never a pickled program.

A checkpoint is a dict:
- `format` ("lmkit-checkpoint"), `format_version`, `lmkit_version`;
- `iteration` (steps done), `model` (state dict of the unwrapped model: no `_orig_mod.` prefixes),
  `optimizer` (its state dict, or None);
and, in the run checkpoints that `lmkit train` writes, also `tokens_seen`, `config` (the resolved run
config as plain data; `config["model"]` is the ModelConfig), `tokenizer_json` (the text of the tokenizer
file, so the checkpoint needs nothing else), `rng` (torch, CUDA and batch-sampler generator states),
`elapsed_s`, `lr`, `train_loss`, `val_loss`, `best_val_loss`, `world_size` (how many processes wrote it)
and `scaler` (the float16 loss scaler's state, or None).
A checkpoint written by `lmkit import hf` holds `iteration` 0, no optimizer state, `config` with only the
`model` table, `tokenizer_json`, `tokens_seen` 0 and `imported_from` (the source folder).
Every file is loaded with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from pydantic import ValidationError
from torch import nn

from lmkit import __version__
from lmkit.accounting import parameter_counts
from lmkit.device import resolve_device, resolve_inference_dtype, use_tf32
from lmkit.errors import InputError, validation_error_message
from lmkit.fileio import atomic_write, parse_json
from lmkit.model import ModelConfig, TransformerLM
from lmkit.model.names import split_block_name
from lmkit.tokenizer import Tokenizer
from lmkit.tokenizer.formats import from_hf_json

FORMAT = "lmkit-checkpoint"
FORMAT_VERSION = 1
_COMPILE_PREFIX = "_orig_mod."

# The special token that ends a document: generation stops at it, exports name it the end-of-sequence token.
END_OF_TEXT = "<|endoftext|>"

# The files `lmkit train` writes in its run folder (hidden temporary files and the lock aside).
CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
LAST_CHECKPOINT = "last.pt"  # every ckpt_every steps and at the end, with the optimizer state: resume from it
BEST_CHECKPOINT = "best.pt"  # at each new best validation loss, weights only
RUN_FILES = (CONFIG_FILE, METRICS_FILE, LAST_CHECKPOINT, BEST_CHECKPOINT)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict under its own names, even when `model` (or a part) went through torch.compile."""
    return {name.replace(_COMPILE_PREFIX, ""): value for name, value in model.state_dict().items()}


def save_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    iteration: int,
    out: str | os.PathLike | IO[bytes],
    **run_state: Any,
) -> None:
    """Write the model, optimizer state and iteration (plus any plain-typed `run_state`) to `out`.

    `out` is a path (written atomically: a temporary file renamed into place) or an open binary file.
    """
    optimizer_state = optimizer.state_dict() if optimizer is not None else None
    write_checkpoint(model_state(model), optimizer_state, iteration, out, **run_state)


def write_checkpoint(
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    iteration: int,
    out: str | os.PathLike | IO[bytes],
    **run_state: Any,
) -> None:
    """`save_checkpoint` from state dicts already taken (e.g. gathered whole from the shards of several ranks)."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "lmkit_version": __version__,
        "iteration": int(iteration),
        "model": model_state,
        "optimizer": optimizer_state,
        **run_state,
    }
    if isinstance(out, str | os.PathLike):
        with atomic_write(out) as handle:
            torch.save(payload, handle)
    else:
        torch.save(payload, out)


def _name(src: str | os.PathLike | IO[bytes]) -> str:
    return str(src) if isinstance(src, str | os.PathLike) else getattr(src, "name", "the checkpoint")


def _is_zip(src: str | os.PathLike | IO[bytes]) -> bool:
    if isinstance(src, str | os.PathLike):
        return zipfile.is_zipfile(src)
    start = src.tell()
    try:
        return zipfile.is_zipfile(src)
    finally:
        src.seek(start)


def checkpoint_in(path: str | os.PathLike, folder_means: tuple[str, ...] = ("best.pt", "last.pt")) -> Path:
    """`path` itself, or for a run folder the first of `folder_means` it holds (training writes best.pt and
    last.pt there); InputError for a folder that holds none of them."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in folder_means:
        if (path / name).is_file():
            return path / name
    raise InputError(f"run folder {path} holds no checkpoint ({' or '.join(folder_means)})")


def read_checkpoint(
    src: str | os.PathLike | IO[bytes], folder_means: tuple[str, ...] = ("best.pt", "last.pt")
) -> dict[str, Any]:
    """Load an lmkit checkpoint onto the CPU with `weights_only=True`; InputError for anything else. A run
    folder stands for the first of `folder_means` it holds.

    Refused with one clear line: a missing file, a truncated or non-PyTorch file, a file holding pickled
    objects other than tensors and plain types (it could run code), a PyTorch file that lmkit did not
    write, and a checkpoint from a newer lmkit format.
    """
    if isinstance(src, str | os.PathLike):
        src = checkpoint_in(src, folder_means)
    name = _name(src)
    if isinstance(src, str | os.PathLike) and not Path(src).is_file():
        raise InputError(f"checkpoint {name} does not exist")
    if not _is_zip(src):
        raise InputError(f"{name} is not a complete PyTorch checkpoint (truncated, or another kind of file)")
    try:
        payload = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(
            f"refusing to load {name}: it holds pickled Python objects, not only tensors and plain types "
            "(a checkpoint is data, not a program)"
        ) from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise InputError(f"{name} is not a readable PyTorch checkpoint ({str(exc).splitlines()[0]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{name} is a PyTorch file but not an lmkit checkpoint")
    version = payload.get("format_version", 0)
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise InputError(f"{name} was written by lmkit {payload.get('lmkit_version')} in a newer format; upgrade lmkit")
    _check_layout(payload, name)
    return payload


def _check_layout(payload: dict[str, Any], name: str) -> None:
    """InputError naming the first entry of a checkpoint that does not have the type lmkit writes there."""
    model, config = payload.get("model"), payload.get("config")
    problem = None
    if not isinstance(payload.get("iteration"), int) or isinstance(payload.get("iteration"), bool):
        problem = "its step (iteration) is not an integer"
    elif not isinstance(model, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()
    ):
        problem = "its weights are not a dict of named tensors"
    elif config is not None and not (
        isinstance(config, dict) and all(isinstance(table, dict) for table in config.values())
    ):
        problem = "its config is not a set of tables"
    elif payload.get("tokenizer_json") is not None and not isinstance(payload["tokenizer_json"], str):
        problem = "its tokenizer is not JSON text"
    if problem:
        raise InputError(f"{name} is a damaged lmkit checkpoint: {problem}")


def model_config_of(payload: dict[str, Any], name: str) -> ModelConfig:
    """The checkpoint's validated ModelConfig; InputError (one line) for a missing or damaged one."""
    table = (payload.get("config") or {}).get("model")
    if table is None:
        raise InputError(f"{name} holds weights but no model config; was it written by `lmkit train`?")
    try:
        return ModelConfig.model_validate(table)
    except ValidationError as err:
        raise InputError(f"{name} has a damaged model config (model.{validation_error_message(err)})") from None


def check_weights_match_config(state: dict[str, torch.Tensor], model_config: ModelConfig, name: str) -> None:
    """InputError unless `state` holds as many layers and parameters as a model built from `model_config`.

    Checked before any model is built: a config that claims more than its weights hold (edited or damaged)
    would otherwise allocate the claimed model first, perhaps terabytes. The counts come from the
    accounting module; the exact names and shapes are checked against the built model (`check_weights_fit`).
    """
    layers = {block[0] for block in map(split_block_name, state) if block is not None}
    if len(layers) != model_config.num_layers:
        raise InputError(
            f"{name}'s weights do not fit this model (its config says {model_config.num_layers:,} layers, "
            f"the weights hold {len(layers)})"
        )
    claimed, held = parameter_counts(model_config)["total"], parameter_count(state)
    if claimed != held:
        raise InputError(
            f"{name}'s weights do not fit this model (its config describes {claimed:,} parameters, "
            f"the weights hold {held:,})"
        )


def check_weights_fit(state: dict[str, torch.Tensor], model: nn.Module, name: str = "checkpoint") -> None:
    """InputError naming the first missing, unexpected or differently shaped tensor, if any."""
    expected = model_state(model)
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        detail = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise InputError(f"{name}'s weights do not fit this model ({detail})")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise InputError(
                f"{name}'s weights do not fit this model ({key} is {tuple(value.shape)} in the checkpoint, "
                f"{tuple(expected[key].shape)} in the model)"
            )


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Load `state` into `model` (or the model torch.compile wrapped) after `check_weights_fit`."""
    check_weights_fit(state, model, name)
    getattr(model, "_orig_mod", model).load_state_dict(state)


def load_checkpoint(
    src: str | os.PathLike | IO[bytes], model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> int:
    """Restore `model` (and `optimizer`, if given) from `src`, a path or an open binary file; return the iteration."""
    payload = read_checkpoint(src)
    load_weights(model, payload["model"], _name(src))
    if optimizer is not None:
        if payload["optimizer"] is None:
            raise InputError(f"{_name(src)} holds no optimizer state")
        optimizer.load_state_dict(payload["optimizer"])
    return payload["iteration"]


@dataclass(frozen=True)
class InferenceCheckpoint:
    """What generation needs from a run checkpoint: the model's config and weights and the tokenizer."""

    model_config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer_json: str
    step: int


def load_inference_checkpoint(path: str | os.PathLike) -> InferenceCheckpoint:
    """Read a checkpoint written by `lmkit train` for generation (weights on the CPU, no optimizer needed).

    Returns an InferenceCheckpoint with `model_config` (a validated lmkit.model.ModelConfig),
    `state_dict` (names as in docs/model.md), `tokenizer_json` (the text of the run's tokenizer.json file)
    and `step`. Typical use:

        ckpt = load_inference_checkpoint("runs/tinystories/best.pt")
        model = TransformerLM(ckpt.model_config)
        model.load_state_dict(ckpt.state_dict)

    Raises InputError for a file that is not a complete lmkit run checkpoint (see read_checkpoint), a
    damaged model config, or weights whose tensors or shapes differ from what the config describes.
    """
    payload = read_checkpoint(path)
    config, tokenizer_json = payload.get("config"), payload.get("tokenizer_json")
    if not isinstance(config, dict) or not isinstance(tokenizer_json, str):
        raise InputError(f"{path} holds weights but no model config or tokenizer; was it written by `lmkit train`?")
    model_config = model_config_of(payload, str(path))
    check_weights_match_config(payload["model"], model_config, str(path))
    return InferenceCheckpoint(
        model_config=model_config,
        state_dict=payload["model"],
        tokenizer_json=tokenizer_json,
        step=payload["iteration"],
    )


def load_model_and_tokenizer(
    checkpoint: str | os.PathLike, device: str = "auto", dtype: str = "float32"
) -> tuple[TransformerLM, Tokenizer]:
    """The model (in eval mode, on `device`, its weights in `dtype`) and tokenizer stored in a checkpoint
    written by `lmkit train`.

    `dtype` "auto" holds the model in bfloat16 on a CUDA GPU with native bfloat16 and in float32 elsewhere,
    and lets float32 matmuls use TF32 on CUDA (see lmkit.device.resolve_inference_dtype); a named "float32"
    stays exact. Keep float32 to score
    text under autocast (as `lmkit eval` does). InputError for a missing or invalid checkpoint, weights
    that do not fit its model config, or a dtype the device cannot run.
    """
    target = resolve_device(device, "--device")
    weights_dtype = resolve_inference_dtype(dtype, target)
    if dtype == "auto":  # a named float32 stays exact float32
        use_tf32(target)
    stored = load_inference_checkpoint(checkpoint)  # checks the weights against the config before any build
    tokenizer = Tokenizer.from_json(stored.tokenizer_json)
    model = TransformerLM(stored.model_config)
    load_weights(model, stored.state_dict, str(checkpoint))
    return model.to(target, weights_dtype).eval(), tokenizer


def parameter_count(state: dict[str, torch.Tensor]) -> int:
    """Number of parameters in a state dict, counting a tensor shared by two names (tied weights) once."""
    seen: dict[tuple[int, int], int] = {}
    for tensor in state.values():
        seen[(tensor.untyped_storage().data_ptr(), tensor.storage_offset())] = tensor.numel()
    return sum(seen.values())


def _tokenizer_facts(tokenizer_json: str) -> dict[str, object]:
    source = "the stored tokenizer"
    vocab, merges, special_tokens = from_hf_json(parse_json(tokenizer_json, source), source=source)
    return {
        "tokenizer.vocab_size": max(vocab) + 1,
        "tokenizer.merges": len(merges),
        "tokenizer.special_tokens": ", ".join(special_tokens) or "none",
    }


def checkpoint_facts(path: str | os.PathLike) -> dict[str, object]:
    """The facts `lmkit ckpt info` reports, flat (`model.d_model`, `train.batch_size`, ...)."""
    payload = read_checkpoint(path)
    facts: dict[str, object] = {
        "file": str(path),
        "file_size_mb": round(Path(path).stat().st_size / 1e6, 2),
        "lmkit_version": payload.get("lmkit_version"),
        "step": payload["iteration"],
        "tokens_seen": payload.get("tokens_seen"),
        "parameters": parameter_count(payload["model"]),
        "train_loss": payload.get("train_loss"),
        "last_val_loss": payload.get("val_loss"),
        "best_val_loss": payload.get("best_val_loss"),
        "lr": payload.get("lr"),
        "has_optimizer_state": payload.get("optimizer") is not None,
    }
    if "imported_from" in payload:
        facts["imported_from"] = payload["imported_from"]
    for table, fields in (payload.get("config") or {}).items():
        facts.update({f"{table}.{key}": value for key, value in fields.items()})
    if isinstance(payload.get("tokenizer_json"), str):
        facts.update(_tokenizer_facts(payload["tokenizer_json"]))
    return facts
