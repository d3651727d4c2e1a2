"""What a run folder (train.out_dir) must be before a run writes into it, checked before any work is done."""

from __future__ import annotations

from pathlib import Path

from lmkit.checkpoint import CONFIG_FILE, LAST_CHECKPOINT, RUN_FILES
from lmkit.errors import InputError
from lmkit.fileio import check_folder_can_be_made, read_toml


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
    from lmkit.training.config import validate_config

    if not path.is_file():
        return False
    try:
        validate_config(read_toml(path), str(path))
    except InputError:
        return False
    return True
