"""Keep TensorFlow's logging off the user's terminal unless ``-v`` asks for it.

This is the CLI's business, not the library's: it changes process-wide state
(environment, logger levels, warning filters and file descriptor 2), so it runs
once, when a command starts, before anything imports TensorFlow and before any
rich console writes.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

_SILENCED = False


def silence_tensorflow() -> None:
    """Silence TensorFlow's C++ and Python logging for the rest of the process.

    ``TF_CPP_MIN_LOG_LEVEL`` does not reach the lines absl prints before its own
    initialisation ("All log messages before absl::InitializeLog()...", the CUDA
    stub notice), which TensorFlow writes straight to file descriptor 2 at import
    and again at first use. So file descriptor 2 is pointed at ``/dev/null``
    and Python's ``sys.stderr`` moved to a duplicate of the original, which keeps
    every message of prunectl's own (and Python tracebacks) visible.
    """
    global _SILENCED
    if _SILENCED:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"keras(\..*)?")
    warnings.filterwarnings("ignore", module=r"tensorflow(\..*)?")
    try:
        sys.stderr.flush()
        if sys.stderr.fileno() != 2:  # e.g. click's CliRunner capture: its output must stay captured
            raise ValueError("sys.stderr is not file descriptor 2")
        original = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        sys.stderr = os.fdopen(
            original, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8", errors="backslashreplace"
        )
    except (OSError, AttributeError, ValueError):
        pass  # no real stderr (e.g. captured by a test runner): nothing to protect
    _SILENCED = True
