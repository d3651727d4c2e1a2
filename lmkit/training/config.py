"""The run config: a TOML file with [data], [model], [optim] and [train] tables, validated by pydantic.

Every table forbids unknown keys, so a typo fails loudly (naming the key and the closest valid one)
instead of silently training with a default. `--set table.key=value` overrides are applied to the parsed
TOML before validation, so they are checked exactly like the file.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmkit.device import DEVICE_PATTERN
from lmkit.errors import InputError, first_error, validation_error_message
from lmkit.fileio import read_toml, tomllib
from lmkit.model import ModelConfig
from lmkit.model.config import Int64


class DataConfig(BaseModel):
    """[data]: the encoded token arrays and the tokenizer that produced them (paths relative to the cwd)."""

    model_config = ConfigDict(extra="forbid")

    train: Path = Field(
        description="training tokens: a 1-D .npy array from `lmkit tokenizer encode`, a folder of such .npy "
        "shards or a glob pattern matching them (read in sorted order, memory-mapped)"
    )
    val: Path = Field(description="validation tokens, same forms")
    tokenizer: Path = Field(
        description="the tokenizer.json that encoded them, or a folder holding it or GPT-2's vocab.json + "
        "merges.txt; copied into every checkpoint"
    )
    format: Literal["tokens", "chat"] = Field(
        default="tokens",
        description="tokens: train and val are token arrays; chat: they are JSON Lines files of conversations "
        "for supervised fine-tuning (see docs/chat.md)",
    )
    strict: bool = Field(
        default=False, description="chat: refuse a malformed conversation (by default it is counted and skipped)"
    )


OPTIMIZERS = ("adamw", "muon")


class OptimConfig(BaseModel):
    """[optim]: the optimizer (AdamW, or Muon for hidden matrices with AdamW for the rest) and the warmup +
    cosine learning-rate schedule (decaying to min_lr at the last step)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    name: Literal["adamw", "muon"] = Field(
        default="adamw",
        description="adamw, or muon: Muon for the 2-D matrices inside the blocks, AdamW (lr, betas, eps) for "
        "embeddings, LM head and norm gains; see docs/training.md",
    )
    lr: float = Field(default=3e-4, gt=0, description="peak learning rate")
    min_lr: float | None = Field(
        default=None, ge=0, description="final learning rate (default lr / 10; or give min_lr_ratio)"
    )
    min_lr_ratio: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="final learning rate as a fraction of lr, instead of min_lr (so it follows a swept lr)",
    )
    warmup_steps: Int64 = Field(default=0, ge=0, description="linear warmup from 0 to lr")
    betas: tuple[float, float] = Field(
        default=(0.9, 0.95), strict=False, description="AdamW beta1, beta2, each in [0, 1)"
    )  # not strict: TOML gives a list; the numbers in it still are
    eps: float = Field(default=1e-8, gt=0, description="AdamW's epsilon, added to sqrt(v) in the denominator")
    weight_decay: float = Field(default=0.1, ge=0, description="decoupled decay of weight matrices")
    decay_embeddings: bool = Field(default=False, description="also decay the token embeddings")
    grad_clip: float | None = Field(default=1.0, gt=0, description="max global gradient L2 norm; omit for none")
    muon_lr: float | None = Field(
        default=None,
        gt=0,
        description="Muon's peak learning rate (default with name = muon: lr, as its update is scaled to AdamW's "
        "RMS); the schedule scales it like lr",
    )
    muon_momentum: float = Field(default=0.95, ge=0, lt=1, description="Muon's (Nesterov) momentum, in [0, 1)")

    @field_validator("name", mode="before")
    @classmethod
    def _known_optimizer(cls, name: object) -> object:
        if isinstance(name, str) and name not in OPTIMIZERS:
            close = difflib.get_close_matches(name.lower(), OPTIMIZERS, n=1, cutoff=0.4)
            hint = f"did you mean {close[0]!r}?" if close else f"choose one of {', '.join(OPTIMIZERS)}"
            raise ValueError(f"unknown optimizer {name!r}; {hint}")
        return name

    @model_validator(mode="after")
    def _check(self) -> OptimConfig:
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"betas must each lie in [0, 1), got {list(self.betas)}")
        if self.muon_lr is None and self.name == "muon":  # left out of AdamW runs, where it means nothing
            self.muon_lr = self.lr
        if self.min_lr is not None and self.min_lr_ratio is not None:
            raise ValueError("give one of min_lr and min_lr_ratio, not both")
        if self.min_lr is None and self.min_lr_ratio is None:
            self.min_lr = self.lr / 10
        if self.min_lr is not None and self.min_lr > self.lr:
            raise ValueError(
                f"min_lr ({self.min_lr}) is above lr ({self.lr}); lower min_lr, or give min_lr_ratio "
                "(min_lr as a fraction of lr) instead"
            )
        return self

    @property
    def final_lr(self) -> float:
        """The learning rate the cosine decays to: min_lr, or lr x min_lr_ratio."""
        return self.min_lr if self.min_lr is not None else self.lr * self.min_lr_ratio


class TrainConfig(BaseModel):
    """[train]: how long, on what, and how often to log, evaluate and checkpoint."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    batch_size: Int64 = Field(
        gt=0, description="sequences per micro-batch (the global batch, split over processes under torchrun)"
    )
    steps: Int64 | None = Field(default=None, gt=0, description="optimizer steps (or give total_tokens)")
    total_tokens: Int64 | None = Field(default=None, gt=0, description="tokens to train on (or give steps)")
    grad_accum: Int64 = Field(default=1, gt=0, description="micro-batches per optimizer step")
    device: str = Field(default="auto", pattern=DEVICE_PATTERN, description="auto: cuda, mps, cpu")
    threads: Int64 | None = Field(
        default=None,
        ge=1,
        description="CPU threads for torch; omit to use OMP_NUM_THREADS, else the physical cores other "
        "processes leave idle (see docs/training.md)",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="auto: bfloat16 autocast on a GPU with native bfloat16, float16 on other GPUs (T4, V100), "
        "float32 on CPUs and MPS; float16: autocast with dynamic loss scaling",
    )
    compile: bool = Field(default=False, description="torch.compile the model")
    batching: Literal["random", "documents"] = Field(
        default="random",
        description="random: windows drawn uniformly from the token stream; documents: rows that start at a "
        "document, documents packed by best fit (see docs/training.md)",
    )
    document_mask: bool = Field(
        default=False,
        description="attention stays inside each document of a row and positions restart at each (training "
        "and validation)",
    )
    parallel: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="under several processes: ddp keeps a whole model on each; fsdp shards parameters, "
        "gradients and optimizer state over them, block by block (FSDP2)",
    )
    seed: Int64 = Field(default=0, ge=0, description="seeds the weights' initialisation and the batch sampler")
    init_from: Path | None = Field(
        default=None,
        strict=False,  # TOML gives a string
        description="start from these weights (fine-tuning): a checkpoint from `lmkit train` or `lmkit import hf` "
        "of the same model; the optimizer, step count and batch order start fresh",
    )
    eval_every: Int64 = Field(default=500, gt=0, description="steps between validation evaluations (and at the end)")
    eval_batches: Int64 = Field(default=20, gt=0, description="fixed validation batches per evaluation")
    log_every: Int64 = Field(default=10, gt=0, description="steps between train lines in metrics.jsonl")
    ckpt_every: Int64 = Field(default=1000, gt=0, description="steps between saves of last.pt (and at the end)")
    sample_every: Int64 | None = Field(
        default=None, gt=0, description="steps between samples of the model's text, shown and kept in samples.jsonl"
    )
    sample_prompt: str = Field(
        default="<|endoftext|>", min_length=1, description="text each sample continues (default: a new document)"
    )
    sample_tokens: Int64 = Field(default=64, ge=1, le=10_000, description="new tokens per sample, at most")
    out_dir: Path = Field(
        default=Path("runs/lmkit"), strict=False, description="run folder: checkpoints, metrics, config"
    )  # not strict: TOML gives a string
    peak_tflops: float | None = Field(
        default=None,
        gt=0,
        description="peak TFLOP/s of one device, for the MFU in the logs (default: looked up for known GPUs; "
        "without it MFU is left out on CPU, mps and other GPUs)",
    )
    wandb_project: str | None = Field(
        default=None, description="also log metrics to this Weights & Biases project (needs pip install wandb)"
    )

    @model_validator(mode="after")
    def _one_length(self) -> TrainConfig:
        if (self.steps is None) == (self.total_tokens is None):
            raise ValueError("give exactly one of train.steps and train.total_tokens")
        return self


class RunConfig(BaseModel):
    """A whole training run."""

    model_config = ConfigDict(extra="forbid")

    data: DataConfig
    model: ModelConfig
    optim: OptimConfig = OptimConfig()
    train: TrainConfig

    @property
    def tokens_per_step(self) -> int:
        """Tokens consumed by one optimizer step: batch_size x grad_accum x context_length."""
        return self.train.batch_size * self.train.grad_accum * self.model.context_length

    @property
    def total_steps(self) -> int:
        """train.steps, or total_tokens / tokens_per_step rounded up."""
        if self.train.steps is not None:
            return self.train.steps
        return math.ceil(self.train.total_tokens / self.tokens_per_step)

    @model_validator(mode="after")
    def _chat_packs_itself(self) -> RunConfig:
        if self.data.format == "chat" and (self.train.batching != "random" or self.train.document_mask):
            raise ValueError(
                'data.format = "chat" packs whole conversations itself: leave train.batching and '
                "train.document_mask at their defaults"
            )
        return self

    @model_validator(mode="after")
    def _warmup_fits(self) -> RunConfig:
        if self.optim.warmup_steps > self.total_steps:
            raise ValueError(
                f"optim.warmup_steps ({self.optim.warmup_steps}) is longer than the run ({self.total_steps} steps)"
            )
        return self


def _parse_value(text: str) -> Any:
    """A --set value read as a TOML value (3e-4, true, [0.9, 0.95], "x"); anything else is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# Keys that say the same thing two ways: an override of one drops the other from the file, so
# `--set train.steps=20` works on a config that gives train.total_tokens.
_ALTERNATIVES = {
    "train.steps": "train.total_tokens",
    "train.total_tokens": "train.steps",
    "optim.min_lr": "optim.min_lr_ratio",
    "optim.min_lr_ratio": "optim.min_lr",
}


def override_key(override: str) -> str:
    """The `table.key` of a `table.key=value` override."""
    return override.partition("=")[0].strip()


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> None:
    """Set each `table.key=value` override in the parsed TOML dict `raw` (in place).

    An empty value (`--set train.total_tokens=`) removes the key, so its default applies. Setting a value
    for one of two alternative keys (train.steps / train.total_tokens, optim.min_lr / optim.min_lr_ratio)
    removes the other unless an override sets it too.
    """
    keys = {override_key(override) for override in overrides}
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not re.fullmatch(r"\w+(\.\w+)*", key.strip()):
            raise InputError(f"--set {override!r}: expected KEY=VALUE, e.g. --set optim.lr=3e-4")
        node, name = _parent_table(raw, key.strip(), override)
        if not value.strip():
            node.pop(name, None)
            continue
        node[name] = _parse_value(value.strip())
        other = _ALTERNATIVES.get(key.strip())
        if other is not None and other not in keys:
            node.pop(other.rpartition(".")[2], None)


def _parent_table(raw: dict[str, Any], key: str, override: str) -> tuple[dict[str, Any], str]:
    """The table of `raw` that holds `key` (created if missing), and the key's last part."""
    *tables, name = key.split(".")
    node = raw
    for table in tables:
        node = node.setdefault(table, {})
        if not isinstance(node, dict):
            raise InputError(f"--set {override!r}: {table} is a value, not a table")
    return node, name


class OverrideError(InputError):
    """A config is invalid because of an override: `override` is the `table.key=value` to blame, `detail` why."""

    def __init__(self, override: str, detail: str) -> None:
        super().__init__(f"--set {override}: {detail}")
        self.override, self.detail = override, detail


def _blamed_override(loc: tuple, detail: str, overrides: list[str]) -> str | None:
    """The override (the last one, if several) that a validation error at `loc` is about, if any: the very key,
    or a key of the table at `loc` that the message names."""
    where = ".".join(str(part) for part in loc)
    for override in reversed(overrides):
        key = override_key(override)
        if key == where:
            return override
        inside = not where or key.startswith(where + ".")
        if inside and re.search(rf"(?<![\w.]){re.escape(key.rpartition('.')[2])}\b", detail):
            return override
    return None


def _fields_at(loc: tuple) -> list[str]:
    """The valid keys of the table at `loc` (a path of field names from RunConfig)."""
    cls: Any = RunConfig
    for part in loc:
        cls = cls.model_fields[part].annotation
    return list(cls.model_fields)


def _tables_with(key: str) -> list[str]:
    """The tables of the run config that have a key named `key`."""
    tables = (name for name, field in RunConfig.model_fields.items() if isinstance(field.annotation, type))
    return [name for name in tables if key in getattr(RunConfig.model_fields[name].annotation, "model_fields", {})]


def _message(err: ValidationError) -> str:
    """One line for the first problem; an unknown key names the table it belongs to, or the closest valid key."""
    first = first_error(err)
    if first["type"] != "extra_forbidden":
        return validation_error_message(err)
    *table, key = (str(part) for part in first["loc"])
    valid = _fields_at(tuple(table))
    prefix = ".".join(table) + "." if table else ""
    elsewhere = [name for name in _tables_with(key) if [name] != table]
    if elsewhere:
        return f"unknown key {prefix}{key}: {key} belongs in [{elsewhere[0]}] (set it as {elsewhere[0]}.{key})"
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean {prefix}{close[0]}?" if close else f"valid keys: {', '.join(valid)}"
    return f"unknown key {prefix}{key}; {hint}"


def validate_config(raw: dict[str, Any], source: str, overrides: list[str] = ()) -> RunConfig:
    """Validate a parsed config dict; InputError with one line naming the key if it is wrong, and naming the
    override (OverrideError) rather than `source` when one of `overrides` caused it."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        detail = _message(err)
        blamed = _blamed_override(tuple(err.errors()[0]["loc"]), detail, list(overrides))
        if blamed is not None:
            raise OverrideError(blamed, detail) from None
        raise InputError(f"{source}: {detail}") from None


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> RunConfig:
    """Read a TOML run config, apply `--set` overrides, and validate the result."""
    path = Path(path)
    raw = read_toml(path)
    apply_overrides(raw, list(overrides))
    return validate_config(raw, str(path), overrides)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # JSON's string escapes are all valid in TOML


def to_toml(config: RunConfig) -> str:
    """The resolved config as TOML text that `load_config` reads back to the same config."""
    lines = []
    for table, fields in config.model_dump(mode="json", exclude_none=True).items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in fields.items())
        lines.append("")
    return "\n".join(lines)
