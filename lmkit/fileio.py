"""Files in and out: atomic writes (a reader never sees a half-written file; a failure leaves nothing), TOML and
JSON reads, JSON writes, and folders built beside their target before they are renamed into place.

An atomic write goes to a temporary file beside its target, `.NAME.HOST-PID-RANDOM.tmp`, which is fsynced and
renamed onto the target, and the folder is fsynced so the rename itself survives a power cut. Killed with
`kill -9`, a writer cannot remove its temporary file; the host and pid in the name let the next writer of the
same target tell such leftovers (`remove_stale_temporaries`) from a live writer's file.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from lmkit.errors import DiskFull, InputError

# errno values that mean "the disk (or the quota, or the file size limit) is full".
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def check_output_path(path: str | os.PathLike) -> Path:
    """Return `path` as a Path, raising InputError if its folder does not exist or it is a folder."""
    out = Path(path)
    if out.is_dir():
        raise InputError(f"output path {out} is a folder; give a file name")
    if not out.parent.is_dir():
        raise InputError(f"output folder {out.parent} does not exist; create it first")
    check_writable_folder(out.parent)
    return out


def check_folder_can_be_made(folder: str | os.PathLike, what: str = "output folder") -> None:
    """InputError unless `folder` is a folder lmkit can write in, or can be created: it must not be a file,
    and its nearest existing folder must take new files (probed with `check_writable_folder`)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{what} {folder} is a file, not a folder; give a folder")
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not existing.is_dir():
        raise InputError(f"{what} {folder} cannot be made: {existing} is a file")
    check_writable_folder(existing)


def check_writable_folder(folder: str | os.PathLike) -> None:
    """InputError unless a file can be created in `folder`, found out by creating (and dropping) a nameless
    one: permissions, read-only mounts and the like all show, before any work is done."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise InputError(f"cannot write in {folder} ({err.strerror or err}); choose a writable location") from None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; on success fsync it and rename it onto `path`.

    On any exception the temporary file is removed and `path` is left as it was; a full disk becomes
    `DiskFull`, naming the file. Temporary files of `path` that killed writers left are removed first.
    """
    out = check_output_path(path)
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    remove_stale_temporaries(out.parent, out.name)  # left by a writer of `out` killed before it could
    with full_disk_reported(out, f"nothing was written and {out.name} is as it was"):
        fd, tmp_name = tempfile.mkstemp(prefix=_temporary_prefix(out), suffix=".tmp", dir=out.parent)
        usual_permissions(tmp_name, 0o666)  # mkstemp makes it 0600
        try:
            with os.fdopen(fd, mode, encoding=encoding) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, out)
            _sync_folder(out.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Write `obj` as indented UTF-8 JSON to `path`, atomically."""
    with atomic_write(path, "w") as handle:
        handle.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def temporary_folder(out: str | os.PathLike) -> Path:
    """A new empty folder beside `out` (hidden, named after it), to fill and then rename onto `out`; it has the
    permissions a plain mkdir would give."""
    out = Path(out)
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    usual_permissions(folder, 0o777)  # mkdtemp makes it 0700
    return folder


def usual_permissions(path: str | os.PathLike, mode: int) -> None:
    """Give `path` the permissions a plain open() or mkdir would: `mode` less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def _temporary_prefix(out: Path) -> str:
    return f".{out.name}.{socket.gethostname()}-{os.getpid()}-"


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so that a rename into it is on disk (not possible on Windows, nor needed there)."""
    if os.name != "posix":  # pragma: no cover
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def full_disk_reported(out: str | os.PathLike, outcome: str = "nothing was written") -> Iterator[None]:
    """Within it, a failure that a full disk caused becomes one DiskFull naming `out` and saying what became
    of it (`outcome`); other failures pass through unchanged."""
    try:
        yield
    except BaseException as err:
        full = _disk_full(err, Path(out), outcome)
        if full is None:
            raise
        raise full from None


def _disk_full(err: BaseException | None, out: Path, outcome: str) -> DiskFull | None:
    """A DiskFull for `out` if a full disk caused `err`: an OSError with such an errno anywhere in its chain
    (torch.save wraps it in its own error), or an error that only quotes the system's message for it (the
    safetensors writer, written in Rust, does)."""
    while err is not None:
        if isinstance(err, DiskFull):
            reason = err.reason
        elif isinstance(err, OSError) and err.errno in _FULL:
            reason = os.strerror(err.errno)
        else:
            reason = next((os.strerror(code) for code in sorted(_FULL) if os.strerror(code) in str(err)), None)
        if reason is not None:
            full = DiskFull(
                f"no space left on the device writing {out} ({reason}); {outcome}: free some space and run again"
            )
            full.reason = reason
            return full
        err = err.__cause__ or err.__context__
    return None


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temporary files that atomic writes (of `name`, or of any file) left in `folder` from
    processes of this host that are no longer running; a live writer's files, another host's, and files not
    named by `atomic_write` stay. Returns the removed files."""
    target = re.escape(name) if name is not None else ".+"
    pattern = re.compile(rf"\.{target}\.{re.escape(socket.gethostname())}-(\d+)-[^.]*\.tmp")
    removed = []
    for temporary in Path(folder).glob(f".{glob.escape(name) if name is not None else ''}*.tmp"):
        match = pattern.fullmatch(temporary.name)
        if match and not process_exists(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
                removed.append(temporary)
    return removed


def process_exists(pid: int) -> bool:
    """Whether a process with this id runs on this host (a zombie, finished but not yet reaped, counts)."""
    if os.name != "posix":  # pragma: no cover (on Windows os.kill would end the process: assume it runs)
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except (OSError, OverflowError):  # a pid beyond what the system has (a damaged file): no such process
        return False
    return True


def read_toml(path: str | os.PathLike, what: str = "config file") -> dict:
    """Parse a TOML file, turning a missing, unreadable or malformed file into one clear InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{what} {path} is not valid TOML ({err})") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise InputError(f"{what} {path} is nested too deeply to read") from None


def parse_json(text: str | bytes, what: str) -> object:
    """`json.loads`, with malformed JSON, or JSON nested too deeply for the parser's recursion, as one
    InputError naming `what`."""
    try:
        return json.loads(text)
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        raise InputError(f"{what} is not valid JSON ({err})") from None
    except RecursionError:
        raise InputError(f"{what} is nested too deeply to read") from None


def read_json(path: str | os.PathLike, what: str = "JSON file") -> dict:
    """Parse a file holding one JSON object, turning a missing, unreadable or malformed file (or another kind
    of JSON value) into one clear InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    obj = parse_json(path.read_bytes(), f"{what} {path}")
    if not isinstance(obj, dict):
        raise InputError(f"{what} {path} is not a JSON object")
    return obj
