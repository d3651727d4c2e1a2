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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmkit.device import DEVICE_PATTERN
from lmkit.errors import InputError, first_error, validation_error_message
from lmkit.fileio import read_toml, tomllib
from lmkit.model import ModelConfig


class DataConfig(BaseModel):
    """[data]: the encoded token arrays and the tokenizer that produced them (paths relative to the cwd)."""

    model_config = ConfigDict(extra="forbid")

    train: Path = Field(description="training tokens, a 1-D .npy array from `lmkit tokenizer encode`")
    val: Path = Field(description="validation tokens, same format")
    tokenizer: Path = Field(description="the tokenizer.json that encoded them; copied into every checkpoint")


class OptimConfig(BaseModel):
    """[optim]: AdamW and the warmup + cosine learning-rate schedule (decaying to min_lr at the last step)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    lr: float = Field(default=3e-4, gt=0, description="peak learning rate")
    min_lr: float | None = Field(default=None, ge=0, description="final learning rate (default lr / 10)")
    warmup_steps: int = Field(default=0, ge=0, description="linear warmup from 0 to lr")
    betas: tuple[float, float] = Field(
        default=(0.9, 0.95), strict=False, description="AdamW beta1, beta2, each in [0, 1)"
    )  # not strict: TOML gives a list; the numbers in it still are
    eps: float = Field(default=1e-8, gt=0, description="AdamW's epsilon, added to sqrt(v) in the denominator")
    weight_decay: float = Field(default=0.1, ge=0, description="decoupled decay of weight matrices")
    decay_embeddings: bool = Field(default=False, description="also decay the token embeddings")
    grad_clip: float | None = Field(default=1.0, gt=0, description="max global gradient L2 norm; omit for none")

    @model_validator(mode="after")
    def _check(self) -> OptimConfig:
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"betas must each lie in [0, 1), got {list(self.betas)}")
        if self.min_lr is None:
            self.min_lr = self.lr / 10
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) is above lr ({self.lr})")
        return self


class TrainConfig(BaseModel):
    """[train]: how long, on what, and how often to log, evaluate and checkpoint."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    batch_size: int = Field(
        gt=0, description="sequences per micro-batch (the global batch, split over processes under torchrun)"
    )
    steps: int | None = Field(default=None, gt=0, description="optimizer steps (or give total_tokens)")
    total_tokens: int | None = Field(default=None, gt=0, description="tokens to train on (or give steps)")
    grad_accum: int = Field(default=1, gt=0, description="micro-batches per optimizer step")
    device: str = Field(default="auto", pattern=DEVICE_PATTERN, description="auto: cuda, mps, cpu")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="auto: bfloat16 autocast where the GPU supports it, else float32; float16: autocast with "
        "dynamic loss scaling, for GPUs without bfloat16 (T4, V100)",
    )
    compile: bool = Field(default=False, description="torch.compile the model")
    parallel: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="under several processes: ddp keeps a whole model on each; fsdp shards parameters, "
        "gradients and optimizer state over them, block by block (FSDP2)",
    )
    seed: int = Field(default=0, description="seeds the weights' initialisation and the batch sampler")
    eval_every: int = Field(default=500, gt=0, description="steps between validation evaluations (and at the end)")
    eval_batches: int = Field(default=20, gt=0, description="fixed validation batches per evaluation")
    log_every: int = Field(default=10, gt=0, description="steps between train lines in metrics.jsonl")
    ckpt_every: int = Field(default=1000, gt=0, description="steps between saves of last.pt (and at the end)")
    out_dir: Path = Field(
        default=Path("runs/lmkit"), strict=False, description="run folder: checkpoints, metrics, config"
    )  # not strict: TOML gives a string
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


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> None:
    """Set each `table.key=value` override in the parsed TOML dict `raw` (in place)."""
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not re.fullmatch(r"\w+(\.\w+)*", key.strip()):
            raise InputError(f"--set {override!r}: expected KEY=VALUE, e.g. --set optim.lr=3e-4")
        *tables, name = key.strip().split(".")
        node = raw
        for table in tables:
            node = node.setdefault(table, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {override!r}: {table} is a value, not a table")
        node[name] = _parse_value(value.strip())


def _fields_at(loc: tuple) -> list[str]:
    """The valid keys of the table at `loc` (a path of field names from RunConfig)."""
    cls: Any = RunConfig
    for part in loc:
        cls = cls.model_fields[part].annotation
    return list(cls.model_fields)


def _message(err: ValidationError) -> str:
    """One line for the first problem; unknown keys name the closest valid key."""
    first = first_error(err)
    if first["type"] != "extra_forbidden":
        return validation_error_message(err)
    *table, key = (str(part) for part in first["loc"])
    valid = _fields_at(tuple(table))
    prefix = ".".join(table) + "." if table else ""
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean {prefix}{close[0]}?" if close else f"valid keys: {', '.join(valid)}"
    return f"unknown key {prefix}{key}; {hint}"


def validate_config(raw: dict[str, Any], source: str) -> RunConfig:
    """Validate a parsed config dict; InputError with one line naming the key if it is wrong."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise InputError(f"{source}: {_message(err)}") from None


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> RunConfig:
    """Read a TOML run config, apply `--set` overrides, and validate the result."""
    path = Path(path)
    raw = read_toml(path)
    apply_overrides(raw, list(overrides))
    return validate_config(raw, str(path))


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
