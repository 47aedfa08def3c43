"""Output paths that are checked before work starts, written atomically, and never left behind.

Everything prunectl writes goes to a temporary file beside the target and is
renamed into place only when complete, so an error, Ctrl-C or SIGTERM never
leaves a half-written model or report, and the input model is never the target.

Every temporary file or folder prunectl creates is named in a process-wide
registry *before* it exists and taken out of it only after it is gone (or
renamed into place). Unwinding removes it as usual; a signal that lands where
no ``finally`` can run yet (between creating a file and entering the ``try``
that removes it) is covered by :func:`remove_leftovers`, which the CLI calls on
its way out. The library itself never touches signal handlers.

Outputs are regular files or absent: a directory, device, FIFO or socket is
never replaced, even with ``force``. An output that is a symbolic link is
written through: the file it names is replaced and the link is kept; a link to
the input, or to anything that is not a regular file, is refused like the file
itself.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prunectl.core.errors import OutputError, first_line

# Temporary paths that may exist on disk: path -> True for a folder. Insertion-ordered.
_LIVE: dict[str, bool] = {}

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(path: Path) -> str | None:
    """What ``path`` (followed through links) is when it is not a regular file; None when it is one or is absent."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, name in _KINDS:
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: through hard links when both exist, through symlinks otherwise."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(path: Path, force: bool, inputs: Iterable[Path | None] = ()) -> None:
    """Raise :class:`OutputError` if ``path`` cannot or must not be written.

    Args:
        path: the file to be written.
        force: allow replacing an existing regular file.
        inputs: files that must never be overwritten: the input model first, then
            any other (data files, a recipe); None entries are skipped.

    Raises:
        OutputError: a missing folder, an existing path that is not a regular file
            (directory, device, FIFO, socket; even with ``force``), an input
            (also through a symbolic or hard link), or an existing file without ``force``.
    """
    real = Path(os.path.realpath(path))
    if not real.parent.is_dir():
        raise OutputError(f"output directory does not exist. Received: {str(path)!r}")
    kind = _kind(path)
    if kind is not None:
        raise OutputError(f"output path is {kind}. Received: {str(path)!r}")
    for i, source in enumerate(inputs):
        if source is not None and same_file(path, source):
            what = "the input model" if i == 0 else f"the input file {str(source)!r}"
            raise OutputError(f"output would overwrite {what}. Received: {str(path)!r}")
    if path.exists() and not force:
        raise OutputError(f"output file exists; pass --force to overwrite it. Received: {str(path)!r}")


def check_distinct(named: Iterable[tuple[str, Path | None]]) -> None:
    """Raise :class:`OutputError` if two of the outputs ``(name, path)`` are one file (links included).

    Raises:
        OutputError: naming the later output of a pair that collides.
    """
    taken: list[Path] = []
    for name, path in named:
        if path is None:
            continue
        if any(same_file(path, other) for other in taken):
            raise OutputError(f"{name} path is another output's path. Received: {str(path)!r}")
        taken.append(path)


# How libhdf5 reports a failed system call: "... errno = 27, error message = 'File too large' ...".
_HDF5_OS_ERROR = re.compile(r"error message = '([^']*)'")


def is_write_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the OS refusing a write: an ``OSError``, or h5py's ``RuntimeError`` that wraps one."""
    return isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and bool(_HDF5_OS_ERROR.search(str(exc))))


def write_error(path: Path, exc: BaseException) -> OutputError:
    """The one-line :class:`OutputError` for an OS error while writing ``path`` (h5py's text spans lines)."""
    found = _HDF5_OS_ERROR.search(str(exc))
    strerror, errno = getattr(exc, "strerror", None), getattr(exc, "errno", None)
    reason = found.group(1) if found else strerror if strerror else os.strerror(errno) if errno else first_line(exc)
    return OutputError(f"cannot write {path}: {reason}. Received: {str(path)!r}")


def _fresh_name(directory: Path, prefix: str, suffix: str) -> Path:
    return directory / f"{prefix}{secrets.token_hex(6)}{suffix}"


def temporary_file(directory: Path, prefix: str, suffix: str = ".tmp") -> Path:
    """Create an empty file (mode 0600) with a fresh name in ``directory``, registered for removal.

    Release it with :func:`discard` (or leave it to :func:`remove_leftovers`).
    """
    while True:
        path = _fresh_name(directory, prefix, suffix)
        _LIVE[str(path)] = False  # named before it exists: a signal from here on finds it
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            _LIVE.pop(str(path), None)  # someone else's file: forget it, never remove it
            continue
        except OSError:  # not created; a signal instead leaves it registered, created or not
            _LIVE.pop(str(path), None)
            raise
        return path


def temporary_directory(directory: Path, prefix: str) -> Path:
    """Create an empty folder (mode 0700) with a fresh name in ``directory``, registered for removal."""
    while True:
        path = _fresh_name(directory, prefix, "")
        _LIVE[str(path)] = True
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            _LIVE.pop(str(path), None)
            continue
        except OSError:  # not created; a signal instead leaves it registered, created or not
            _LIVE.pop(str(path), None)
            raise
        return path


@contextmanager
def scratch_tempdir() -> Iterator[Path]:
    """Point :mod:`tempfile` at a registered folder of our own for the ``with`` body, then remove the folder.

    For third-party code that makes temporary folders of its own and leaves them
    behind when it fails or is interrupted (Keras's ``.keras`` save and load keep
    assets in ``tempfile.mkdtemp()`` folders, closed only on success).
    """
    folder = temporary_directory(Path(tempfile.gettempdir()), "prunectl-")
    previous = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = previous
        discard(folder)


def register(path: Path) -> Path:
    """Register ``path``, a file that something else is about to create, for removal; returns it."""
    _LIVE[str(path)] = False
    return path


def discard(path: Path) -> None:
    """Remove the temporary ``path`` (file or folder) if it exists, then forget it."""
    if _LIVE.get(str(path)):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    _LIVE.pop(str(path), None)


def remove_leftovers() -> list[str]:
    """Remove every registered temporary path still on disk; returns those removed.

    The CLI calls this on its way out, whatever the exit: after an interrupt it
    catches a file created in the instant before the code that would remove it ran.
    """
    removed = []
    for path in list(reversed(_LIVE)):
        if os.path.lexists(path):
            removed.append(path)
        try:
            discard(Path(path))
        except OSError:
            _LIVE.pop(path, None)
    return removed


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

    A ``target`` that is a symbolic link is written through: the temporary file
    goes beside the file the link names, which it replaces; the link stays.

    The temporary file is flushed to the disk before the rename, and the folder
    after it, so that a crash or power loss leaves the old file or the whole new
    one, never an empty or partly written file under the target's name.

    On any exception (KeyboardInterrupt and Terminated included) the temporary
    file is removed and ``target`` is left as it was.

    Raises:
        OutputError: an OS error while writing (disk full, file too large, ...),
            as one line naming ``target``.
    """
    real = Path(os.path.realpath(target)) if os.path.islink(target) else target
    directory = real.parent if str(real.parent) else Path(".")
    try:
        tmp_path = temporary_file(directory, f".{real.name}.")
    except OSError as exc:
        raise write_error(target, exc) from None
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        _fsync(tmp_path)
        os.replace(tmp_path, real)
    except (OSError, RuntimeError) as exc:
        discard(tmp_path)
        if not is_write_error(exc):
            raise
        raise write_error(target, exc) from None
    except BaseException:
        discard(tmp_path)
        raise
    _LIVE.pop(str(tmp_path), None)
    _fsync_directory(directory)


def write_text_atomic(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
