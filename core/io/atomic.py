"""Output paths that are checked before work starts and written atomically.

Everything prunectl writes goes to a temporary file beside the target and is
renamed into place only when complete, so an error or Ctrl-C never leaves a
half-written model or report, and the input model is never the target.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prunectl.core.errors import OutputError


def check_output(path: Path, force: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Raise :class:`OutputError` if ``path`` cannot or must not be written.

    Args:
        path: the file to be written.
        force: allow replacing an existing file.
        inputs: files that must never be overwritten (the input model).
    """
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output directory does not exist. Received: {str(path)!r}")
    if path.is_dir():
        raise OutputError(f"output path is a directory. Received: {str(path)!r}")
    for source in inputs:
        if path.exists() and source.exists() and os.path.samefile(path, source):
            raise OutputError(f"output would overwrite the input model. Received: {str(path)!r}")
    if path.exists() and not force:
        raise OutputError(f"output file exists; pass --force to overwrite it. Received: {str(path)!r}")


def _fsync(path: Path) -> None:
    """Flush ``path``'s data to the disk (Windows needs a writable handle for that)."""
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable, where the platform can (not on Windows, nor some file systems)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it to ``target`` on success.

    The temporary file is flushed to the disk before the rename, and the folder
    after it, so that a crash or power loss leaves the old file or the whole new
    one, never an empty or partly written file under the target's name.

    On any exception (KeyboardInterrupt included) the temporary file is removed
    and ``target`` is left as it was.
    """
    directory = target.parent or Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        _fsync(tmp_path)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)


def write_text_atomic(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
