"""SIGINT and SIGTERM for the command line: stop promptly, leave no temporary file, exit 130 or 143.

Python turns SIGINT into ``KeyboardInterrupt``; SIGTERM (a cancelled CI job,
``docker stop``) would kill the process outright and leave temporary files of
the size of the model behind. The handler installed here raises
:class:`~prunectl.core.errors.Terminated` for SIGTERM instead, so both unwind
through the same ``finally`` blocks, and ignores both signals from then on, so
that a second Ctrl-C or SIGTERM cannot cut the cleanup short. ``cli/main.py``
then removes whatever temporary path is still registered
(:func:`prunectl.core.io.atomic.remove_leftovers`) and exits.

Only the console script installs it: the library, and ``CliRunner`` in tests,
leave the process's signal handling alone.
"""

from __future__ import annotations

import signal

from prunectl.core.errors import Terminated

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []


def ignore() -> None:
    """Ignore SIGINT and SIGTERM from now on (while cleaning up and exiting)."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _stop(signum, frame) -> None:
    ignore()
    _received.append(signum)
    stop_if_signalled()


def stop_if_signalled() -> None:
    """Raise again for a signal already received, should its first exception have been swallowed.

    The handler raises wherever Python happens to be; inside TensorFlow's C++
    calling back into Python the exception can come out as a ``SystemError`` that
    TensorFlow catches, logs and goes on from. Progress callbacks call this, so
    the run stops at the next step at the latest.
    """
    if not _received:
        return
    if _received[0] == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(_received[0])


def received() -> bool:
    """Whether SIGINT or SIGTERM has reached this process's handler."""
    return bool(_received)


def first() -> int:
    """The first signal received (call only after :func:`received`)."""
    return _received[0]


def checked(callback):
    """``callback`` (a progress callback, or None) made to call :func:`stop_if_signalled` first."""
    if callback is None:
        return None

    def call(*args, **kwargs):
        stop_if_signalled()
        return callback(*args, **kwargs)

    return call


def install() -> None:
    """Make SIGINT raise ``KeyboardInterrupt`` and SIGTERM ``Terminated``, once each, then be ignored.

    A signal already ignored when prunectl starts (``nohup``, a shell's background job) stays ignored.
    """
    for sig in SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _stop)
