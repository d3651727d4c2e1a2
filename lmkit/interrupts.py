"""Ctrl-C and SIGTERM: how a command stops, and how worker processes never outlive or outshout their parent.

A cluster scheduler (SLURM, Kubernetes) and torchrun stop a job with SIGTERM, a user with Ctrl-C (SIGINT).
Under `raise_on_signals` both raise `Interrupted` in the main thread, so a command unwinds as it does for
Ctrl-C: `with` blocks close, temporary files are removed, worker processes are stopped. The first signal
also makes both ignored from then on: a second Ctrl-C a few milliseconds later would otherwise cut that
clean-up short, or land in the interpreter's exit handlers and print their traceback.

Worker processes (`start_workers` around their start, `prepare_worker` first thing in them) leave Ctrl-C to
their parent, which stops them, die on SIGTERM (how `terminate()` stops them), and exit on their own within
a second once their parent is gone, even after a `kill -9` that left the parent no time to stop them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PARENT_CHECK_S = 0.5


class Interrupted(KeyboardInterrupt):
    """The command was stopped by the signal `signum` (Ctrl-C or SIGTERM); its exit status is 128 + signum."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(signum: int) -> int:
    """The shell's exit status for a process ended by signal `signum`: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


def ignore_stop_signals() -> None:
    """Ignore Ctrl-C and SIGTERM from now on (the process is already stopping because of one)."""
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


def _raise_interrupted(signum: int, frame: object) -> None:
    ignore_stop_signals()
    raise Interrupted(signum)


def raise_again_on_signals() -> None:
    """After an `Interrupted` was handled and the command goes on (a chat's answer stopped by Ctrl-C), make the
    next Ctrl-C or SIGTERM raise again rather than be ignored."""
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, _raise_interrupted)


@contextlib.contextmanager
def raise_on_signals() -> Iterator[None]:
    """While the block runs, Ctrl-C and SIGTERM raise `Interrupted` (and are ignored after the first).

    Once they are ignored (`ignore_stop_signals`: the process is stopping) they stay ignored after the block.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_interrupted)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if signal.getsignal(signum) is _raise_interrupted:
                signal.signal(signum, handler)


@contextlib.contextmanager
def start_workers() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back while worker processes start; they arrive once the block ends.

    A forked child starts with its parent's Python signal handlers: a signal arriving before the child has
    set its own (`prepare_worker`) would raise in the child, mid-start, and print a traceback.
    """
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover (Windows)
        yield
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def prepare_worker(parent_pid: int) -> None:
    """First thing in a worker process: Ctrl-C is the parent's to handle, SIGTERM ends the worker, and the
    worker exits as soon as `parent_pid` is no longer its parent (the parent died)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True, name="exit-with-parent").start()


def _exit_with_parent(parent_pid: int) -> None:
    """Poll the parent; a dead parent's children are adopted by another process, which changes getppid()."""
    while os.getppid() == parent_pid:
        time.sleep(_PARENT_CHECK_S)
    os._exit(1)  # no clean-up: the worker may be blocked writing to a pipe that nobody reads any more
