"""The checks before a run builds anything: the run folder and its lock, the checkpoint to resume (same
model, same optimizer, weights that fit the config), and whether the run fits the device's memory.

Each refuses with one InputError line, so a run that cannot work fails in a second, not minutes later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from lmkit.checkpoint import CONFIG_FILE, LAST_CHECKPOINT, RUN_FILES, check_weights_match_config
from lmkit.errors import InputError, validation_error_message
from lmkit.fileio import check_folder_can_be_made, read_toml
from lmkit.model import ModelConfig
from lmkit.training.config import RunConfig, validate_config
from lmkit.training.distributed import Distributed
from lmkit.training.memory_check import check_run_fits
from lmkit.training.runlock import refuse_if_held


def check_run(config: RunConfig, checkpoint: dict[str, Any] | None, resume_name: str) -> None:
    """Before anything is built: the run folder is free (no live run holds its lock) and can take this run's
    files, and a checkpoint to resume holds this model, this optimizer's state and weights that fit."""
    out_dir = Path(config.train.out_dir)
    refuse_if_held(out_dir)
    if checkpoint is not None:
        check_same_model(config, checkpoint, resume_name)
        check_same_optimizer(config, checkpoint, resume_name)
        check_weights_match_config(checkpoint["model"], config.model, resume_name)
    check_run_folder(out_dir, resuming=checkpoint is not None)


def check_resources(
    config: RunConfig, dist: Distributed, device: torch.device, autocast_dtype: torch.dtype | None
) -> None:
    """The run fits the device's memory (this process's rows, its share of the weights under FSDP), and its
    dtype and parallelism go together."""
    fsdp = dist.enabled and config.train.parallel == "fsdp"
    local_rows = len(range(config.train.batch_size)[dist.row_share(config.train.batch_size)])
    shards = dist.world_size if fsdp else 1
    train = config.train
    check_run_fits(config.model, train.batch_size, train.eval_batches, local_rows, device, shards, autocast_dtype)
    if autocast_dtype == torch.float16 and fsdp:
        raise InputError(
            f'float16 (train.dtype = "{config.train.dtype}" on this device) needs loss scaling, which lmkit does not '
            'do across FSDP shards; use train.parallel = "ddp", or train.dtype = "bfloat16" (where the GPU has it) '
            'or "float32"'
        )


def check_same_model(config: RunConfig, checkpoint: dict[str, Any], name: str, action: str = "resume") -> None:
    """InputError naming the first model setting in which the checkpoint differs from `config`."""
    # Validated, so that a field added since the checkpoint was written compares as its default.
    try:
        saved_model = ModelConfig.model_validate(checkpoint.get("config", {}).get("model", {})).model_dump(mode="json")
    except ValidationError as err:
        raise InputError(f"{name}: its model config is not valid here ({validation_error_message(err)})") from None
    wanted = config.model.model_dump(mode="json")
    for key, value in wanted.items():
        if saved_model.get(key) != value:
            raise InputError(
                f"cannot {action} {name}: it was trained with model.{key} = {saved_model.get(key)!r}, "
                f"the config says {value!r} (the model must be the same)"
            )


def check_same_optimizer(config: RunConfig, checkpoint: dict[str, Any], name: str) -> None:
    """InputError if the checkpoint's optimizer state belongs to another optimizer than `config`'s."""
    saved = checkpoint.get("config", {}).get("optim", {}).get("name", "adamw")
    if saved != config.optim.name:
        raise InputError(
            f"cannot resume {name}: it was trained with optim.name = {saved!r}, the config says "
            f"{config.optim.name!r} (the optimizer state of one does not fit the other)"
        )


def check_run_folder(out_dir: Path, resuming: bool) -> None:
    """InputError if a run cannot write its files into `out_dir`, or would overwrite what is not its own.

    Refused: an out_dir that is a file; one that is not writable (its nearest existing folder is probed);
    a run file there that is a symbolic link or not a plain file (a run writes its own files, never
    through a link); and, for a fresh run, a folder holding a run (last.pt: resume it instead) or files
    of a run lmkit did not write (best.pt, metrics.jsonl or a config.toml without an lmkit config.toml).
    """
    check_folder_can_be_made(out_dir, "train.out_dir")
    for name in RUN_FILES:
        path = out_dir / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            kind = "a symbolic link" if path.is_symlink() else "not a plain file"
            raise InputError(
                f"{path} is {kind}; lmkit writes a run's own files and never through links: "
                "remove it or set train.out_dir to a new folder"
            )
    if resuming:
        return
    if (out_dir / LAST_CHECKPOINT).exists():
        raise InputError(
            f"{out_dir} already holds a run; resume it with --resume {out_dir / LAST_CHECKPOINT} "
            "or set train.out_dir to a new folder"
        )
    leftovers = [name for name in RUN_FILES if (out_dir / name).exists()]
    if leftovers and not _is_lmkit_config(out_dir / CONFIG_FILE):
        raise InputError(
            f"{out_dir} holds {', '.join(leftovers)} but no lmkit run (no last.pt and no lmkit config.toml); "
            "lmkit will not replace them: set train.out_dir to a new folder"
        )


def _is_lmkit_config(path: Path) -> bool:
    """Whether `path` is a run config that lmkit wrote (an earlier start in this folder that never saved)."""
    if not path.is_file():
        return False
    try:
        validate_config(read_toml(path), str(path))
    except InputError:
        return False
    return True
