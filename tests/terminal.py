"""Run the real ``prunectl`` executable under a pseudo-terminal, as a person would see it.

Click's ``CliRunner`` has no terminal: rich draws no live display there, and
nothing TensorFlow does to file descriptor 2 reaches it. This helper starts the
console script on a pty of a given size, with the pty as its controlling
terminal (``start_new_session``), and returns what the terminal received.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

PRUNECTL = Path(sys.executable).with_name("prunectl")
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-B]|\x1b[=>]")
_TOKENS = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-B]|\x1b[=>]|\n|\r|[^\x1b\r\n]+")
_UP = re.compile(r"\x1b\[(\d*)A")


@dataclass(frozen=True)
class Screen:
    """What a run left on the terminal."""

    raw: str  # everything written to the pty, escape sequences included
    code: int  # the exit status (128 + N where the process died of signal N)

    @property
    def text(self) -> str:
        """What stays on the screen: redrawn lines (a live display's) replaced, escape sequences taken out.

        A small terminal: ``\\r`` and erase-line clear the current line, cursor-up
        goes back a line (as rich does to redraw); other sequences are dropped.
        """
        lines: list[str] = [""]
        for token in _TOKENS.findall(self.raw.replace("\r\n", "\n")):
            if token == "\n":
                lines.append("")
            elif token in ("\r", "\x1b[2K"):
                lines[-1] = ""
            elif _UP.fullmatch(token):
                for _ in range(int(_UP.fullmatch(token).group(1) or 1)):  # type: ignore[union-attr]
                    if len(lines) > 1:
                        lines.pop()
            elif not token.startswith("\x1b"):
                lines[-1] += token
        return "\n".join(lines)

    @property
    def cursor_shown(self) -> bool:
        """Whether the cursor is visible at the end: no hide, or the last hide followed by a show."""
        hidden = self.raw.rfind(HIDE_CURSOR)
        return hidden < 0 or self.raw.find(SHOW_CURSOR, hidden) > hidden


def run_in_terminal(
    args: list[str],
    columns: int = 80,
    rows: int = 40,
    timeout: float = 120.0,
    send: tuple[str, str | int] | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    program: list[str] | None = None,
) -> Screen:
    """Run ``prunectl *args`` on a ``columns`` x ``rows`` pseudo-terminal and collect its output.

    Args:
        args: the command line after ``prunectl``.
        columns: the terminal's width.
        rows: the terminal's height.
        timeout: seconds before the process is killed (the run then fails the test).
        send: ``(after, keys)``: once ``after`` appears in the output, type ``keys`` (``"\\x03"`` is
            Ctrl-C), or send the process signal ``keys`` where it is a number.
        env: extra environment variables.
        cwd: the working directory.
        program: what to run instead of the ``prunectl`` console script (e.g. ``[python, script]``).

    Returns:
        The raw output and the exit status.

    Raises:
        TimeoutError: the run took longer than ``timeout``.
    """
    primary, secondary = os.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    environment = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR")}
    environment.update({"TERM": "xterm-256color", "TF_CPP_MIN_LOG_LEVEL": "0", **(env or {})})
    process = subprocess.Popen(
        [*(program or [str(PRUNECTL)]), *args],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        start_new_session=True,  # its own session, with the pty as controlling terminal (Ctrl-C goes to it)
        env=environment,
        cwd=cwd,
        # After setsid: make the pty this session's controlling terminal, so Ctrl-C (\x03) sends SIGINT.
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(secondary)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    pending = send
    try:
        while True:
            if time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                raise TimeoutError(f"prunectl {' '.join(args)} ran past {timeout} s")
            ready, _, _ = select.select([primary], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(primary, 65536)
                except OSError:  # EIO: every holder of the secondary end has closed it
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            if pending is not None and pending[0] in _ANSI.sub("", b"".join(chunks).decode("utf-8", "replace")):
                if isinstance(pending[1], int):
                    process.send_signal(pending[1])
                else:
                    os.write(primary, pending[1].encode())
                pending = None
            elif not ready and process.poll() is not None:
                break
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(primary)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return Screen(b"".join(chunks).decode("utf-8", "replace"), code if code >= 0 else 128 - code)
