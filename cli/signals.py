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


def _stop(signum, frame) -> None:
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def install() -> None:
    """Make SIGINT raise ``KeyboardInterrupt`` and SIGTERM ``Terminated``, once each, then be ignored.

    A signal already ignored when prunectl starts (``nohup``, a shell's background job) stays ignored.
    """
    for sig in SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _stop)
