"""Stopping a training run on Ctrl-C or SIGTERM: finish the step, save last.pt, exit 130 or 143.

Schedulers stop jobs with SIGTERM and a grace period (SLURM's `--signal=TERM@120`, Kubernetes'
terminationGracePeriodSeconds), torchrun forwards SIGTERM to its workers, and a user presses Ctrl-C: all of
them are a request to stop soon, which the loop honours after its current step, saving a checkpoint to
resume from. A second signal stops at once (raising `lmkit.interrupts.Interrupted`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from lmkit.interrupts import STOP_SIGNALS, Interrupted, ignore_stop_signals


class StopRequest:
    """Set by the first Ctrl-C or SIGTERM: `signum` says which (None while no stop was asked for).

    Under torchrun a stop that reached another rank is set here too (see `Trainer._stopping`); `received`
    counts the signals that reached this process, so the one torchrun then forwards here is not taken for
    a second, impatient one.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.received = 0

    def is_set(self) -> bool:
        """Whether a stop was asked for."""
        return self.signum is not None

    def set(self, signum: int) -> None:
        """Ask for a stop, as signal `signum` does (the first request wins)."""
        if self.signum is None:
            self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """While the block runs, the first Ctrl-C or SIGTERM only sets the yielded request; a second one raises
    `Interrupted` at once. The signal handlers in place before come back when the block ends."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # signal handlers can only be installed from the main thread
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    def on_signal(signum: int, frame: object) -> None:
        request.received += 1
        if request.received > 1:
            ignore_stop_signals()
            raise Interrupted(signum)
        request.set(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
