"""A bounded shutdown for `lmkit serve`: once asked to stop, open requests get `seconds` to finish.

Schedulers send SIGKILL some 30 s after SIGTERM, and a 5,000-token stream would outlive that. From the stop
request on, new requests are refused with 503; when the time is up, streams still open end with a final chunk
per unfinished choice (`finish_reason: "length"`) and `[DONE]`, and whole completions still waiting get 503.
"""

from __future__ import annotations

import asyncio
import time
from typing import TypeVar

T = TypeVar("T")

# How often a waiting request looks at the clock: the drain's resolution.
CHECK_SECONDS = 0.1


class DrainExpired(Exception):
    """The shutdown's time for open requests is up."""


class Drain:
    """The state of a bounded shutdown: not begun, or begun with a deadline."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline: float | None = None

    def begin(self) -> None:
        """Start the countdown (a second stop request does not extend it)."""
        if self.deadline is None:
            self.deadline = time.monotonic() + self.seconds

    @property
    def begun(self) -> bool:
        """Whether the server has been asked to stop."""
        return self.deadline is not None

    async def get(self, queue: asyncio.Queue[T]) -> T:
        """The next item of `queue`; DrainExpired once the deadline has passed (checked every CHECK_SECONDS)."""
        while True:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise DrainExpired
            try:
                return await asyncio.wait_for(queue.get(), timeout=CHECK_SECONDS)
            except TimeoutError:
                continue
