"""The error types that the library raises and the command line turns into exit statuses."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class InputError(ValueError):
    """Something the user handed lmkit is wrong: the CLI prints the message on one line and exits 2.

    The message should say what is wrong and, where it helps, what to do about it.
    """


class DiskFull(OSError):
    """A write failed for want of space (or quota); the message names the file and what became of it."""

    reason: str = "No space left on device"  # the system's words for the errno behind it


def validation_error_message(err: ValidationError) -> str:
    """One line naming the offending field and why, from a pydantic ValidationError.

    Only one problem is reported: fixing it and trying again is how users work through a config. An
    unknown key goes first: a misspelt required key (`d_modle`) also makes the real one missing, and the
    spelling is what needs fixing.
    """
    first = first_error(err)
    field = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"unknown key {field!r}: check its spelling"
    return f"{field}: {message}" if field else message


def first_error(err: ValidationError) -> dict:
    """The error to report from a ValidationError: the first unknown key if there is one, else the first error."""
    errors = err.errors()
    return next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
