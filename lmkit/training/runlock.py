"""The run-folder lock: one training run at a time writes into a `train.out_dir`.

A run holds `OUT_DIR/train.lock`, a small JSON file naming its pid, host and start time, created atomically
(a hard link of a finished file, which fails if the name exists, also on NFS), and removes it when it ends.
A second run into the same folder is refused with one line naming the first. A lock whose process is
gone (killed with `kill -9`, or by a power cut) is taken over with a warning when that process ran on this
host; a lock from another host cannot be checked from here, so the message says to delete it by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from lmkit.errors import InputError
from lmkit.fileio import process_exists, remove_stale_temporaries

LOCK_FILE = "train.lock"


def _holder(lock: Path) -> dict | None:
    """The lock's contents, or None where it vanished or is not (yet) a finished lock file."""
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, ValueError, UnicodeDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def _describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {started}"


def _is_stale(holder: dict) -> bool:
    """Whether the holder is a process of this host that is no longer running."""
    return holder.get("host") == socket.gethostname() and not process_exists(int(holder.get("pid", 0)))


def refuse_if_held(folder: Path) -> None:
    """InputError naming the run that holds `folder`'s lock, if a live one does."""
    holder = _holder(Path(folder) / LOCK_FILE)
    if holder is not None and not _is_stale(holder):
        lock = Path(folder) / LOCK_FILE
        where = "" if holder.get("host") == socket.gethostname() else (
            f"; if that run is gone, delete {lock}"
        )
        raise InputError(f"{folder} is in use by another lmkit train run ({_describe(holder)}){where}")


def _try_create(lock: Path, mine: dict) -> bool:
    """Create `lock` holding `mine` unless it exists; the file appears complete or not at all."""
    draft = lock.with_name(f".{lock.name}.{mine['host']}-{mine['pid']}.draft")
    draft.write_text(json.dumps(mine), encoding="utf-8")
    try:
        os.link(draft, lock)
        return True
    except FileExistsError:
        return False
    finally:
        draft.unlink()


def acquire(folder: Path) -> dict:
    """Take `folder`'s lock for this process (taking over a stale one, with a warning); InputError if held."""
    lock = Path(folder) / LOCK_FILE
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    for _ in range(10):
        if _try_create(lock, mine):
            return mine
        holder = _holder(lock)
        if holder is None:  # it was just removed, or its writer is between creating and linking
            time.sleep(0.05)
            continue
        refuse_if_held(folder)
        # Stale: remove it, but only if it is still the same stale lock (not one that another run has
        # just taken over), then race for the name again.
        if _holder(lock) == holder:
            warnings.warn(
                f"taking over the lock of an earlier run in {folder} ({_describe(holder)}), which is no longer "
                "running",
                stacklevel=2,
            )
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
    raise InputError(f"could not take the lock {lock}: other processes keep changing it")


def release(folder: Path, mine: dict) -> None:
    """Remove `folder`'s lock if this process still holds it."""
    lock = Path(folder) / LOCK_FILE
    if _holder(lock) == mine:
        lock.unlink()


@contextlib.contextmanager
def run_folder(folder: Path) -> Iterator[None]:
    """Hold `folder`'s lock while the block runs, after removing the temporary files that runs killed
    mid-write (say, in the middle of saving last.pt) left there."""
    mine = acquire(folder)
    try:
        remove_stale_temporaries(folder)
        yield
    finally:
        release(folder, mine)
