"""Files in and out: atomic writes (a reader never sees a half-written file; a failure leaves nothing), TOML reads."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from lmkit.errors import InputError

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

    On any exception the temporary file is removed and `path` is left as it was.
    """
    out = check_output_path(path)
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    # mkstemp creates the file 0600; give it the permissions a plain open() would (0666 less the umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_name, 0o666 & ~umask)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def read_toml(path: str | os.PathLike, what: str = "config file") -> dict:
    """Parse a TOML file, turning a missing, unreadable or malformed file into one clear InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{what} {path} is not valid TOML ({err})") from None
