"""The life of one command: a signal ends it as an exception (so every `with` block and
`except BaseException` cleans up as for Ctrl-C), and its temporary files live in one folder
that is removed at the end. Light on imports: the CLI enters these before TensorFlow loads."""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

HANDLED = (signal.SIGTERM, signal.SIGINT)  # a scheduler's or `docker stop`'s, and Ctrl-C
# The handlers we may replace: Python's own defaults. A handler someone else installed (or
# SIG_IGN, as `nohup` sets) is theirs and is left alone.
_DEFAULTS = (signal.SIG_DFL, signal.default_int_handler)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived. A KeyboardInterrupt, so code that cleans up after Ctrl-C
    cleans up after SIGTERM too, and `except Exception` does not swallow it. The MLflow
    run's `error` tag reads `Terminated: SIGTERM`."""

    def __init__(self, signal_number: int):
        self.signal_number = int(signal_number)
        super().__init__(signal.Signals(signal_number).name)

    @property
    def exit_status(self) -> int:
        return 128 + self.signal_number  # what a shell reports for a process a signal ended


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal's number: 143 for SIGTERM, 130 for Ctrl-C."""
    return getattr(interrupt, "exit_status", 128 + signal.SIGINT)


def signal_name(interrupt: KeyboardInterrupt) -> str:
    return signal.Signals(exit_status(interrupt) - 128).name


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM and SIGINT raise `Terminated` in the main thread while the block runs; the
    previous handlers are put back after it. Elsewhere than in the main thread (the Python
    API called from a worker), nothing is installed: Python allows handlers there only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in HANDLED}
    replaced = {number: handler for number, handler in previous.items()
                if handler in _DEFAULTS}

    def raise_terminated(number, frame):
        # A second signal gets the default behaviour back: stop waiting for the clean-up.
        _restore(replaced)
        raise Terminated(number)

    for number in replaced:
        signal.signal(number, raise_terminated)
    try:
        yield
    finally:
        _restore(replaced)


def _restore(handlers: dict) -> None:
    for number, handler in handlers.items():
        signal.signal(number, handler)


@contextlib.contextmanager
def private_tempdir(prefix: str = "cxr-run-") -> Iterator[Path]:
    """Every temporary file of the block, ours and the libraries' (MLflow's model downloads,
    TensorFlow's generated modules, which nobody removes), under one new folder of TMPDIR that
    is removed at the end, after a failure or a signal too. Process-wide (it sets
    `tempfile.tempdir`): for the command line, not for a library call."""
    folder = tempfile.mkdtemp(prefix=prefix)
    previous = tempfile.tempdir
    tempfile.tempdir = folder
    try:
        yield Path(folder)
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(folder, ignore_errors=True)
