"""Keep TensorFlow's logging off the user's terminal unless ``-v`` asks for it.

This is the CLI's business, not the library's: it changes process-wide state
(environment, logger levels, warning filters and file descriptor 2), so it runs
once, when a command starts, before anything imports TensorFlow.

Human output never goes through ``sys.stderr`` or file descriptor 2 by name:
:func:`terminal_stream` pins a duplicate of the original file descriptor 2,
made once, before anything is silenced, and every console and ``Error:`` line of
prunectl's writes to that object. Whatever TensorFlow, Keras or absl later does
to ``sys.stderr`` or to file descriptor 2 (redirect it, restore
``sys.__stderr__``, close it) cannot swallow prunectl's output.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import TextIO

_SILENCED = False
_PINNED: list[TextIO] = []


def terminal_stream() -> TextIO:
    """The stream human output is written to: a pinned duplicate of the original stderr.

    Pinned on the first call (the console script calls it first thing). Where
    ``sys.stderr`` is not file descriptor 2 (click's ``CliRunner`` captures it in
    memory) nothing is pinned and the current ``sys.stderr`` is returned, so each
    test run's output stays captured.
    """
    if _PINNED:
        return _PINNED[0]
    stream = sys.stderr
    try:
        if stream.fileno() != 2:
            return stream
        stream.flush()
        duplicate = os.dup(2)
    except (OSError, AttributeError, ValueError):
        return stream  # no real stderr: nothing to pin
    pinned = os.fdopen(
        duplicate, "w", buffering=1, encoding=stream.encoding or "utf-8", errors="backslashreplace", closefd=True
    )
    _PINNED.append(pinned)
    return pinned


def silence_tensorflow() -> None:
    """Silence TensorFlow's C++ and Python logging for the rest of the process.

    ``TF_CPP_MIN_LOG_LEVEL`` and the logger levels come first; they do not reach
    the lines absl prints before its own initialisation ("All log messages before
    absl::InitializeLog()...", the CUDA stub notice), which TensorFlow writes
    straight to file descriptor 2, so file descriptor 2 is then pointed at
    ``/dev/null``. The terminal stream is pinned before that, and ``sys.stderr``
    is pointed at it as well: Python-level output (a warning of prunectl's own,
    the last-resort traceback of a crash) stays visible, while TensorFlow's
    Python noise is already cut off by the logger levels and warning filters.
    """
    global _SILENCED
    if _SILENCED:
        return
    _SILENCED = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"keras(\..*)?")
    warnings.filterwarnings("ignore", module=r"tensorflow(\..*)?")
    terminal = terminal_stream()
    if not _PINNED:
        return  # e.g. click's CliRunner capture: fd 2 is not where the output goes, leave it alone
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except OSError:
        return
    sys.stderr = terminal
