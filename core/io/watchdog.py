"""Run an untrusted read in a child process, so a read that never returns cannot hold prunectl.

h5py holds the GIL while libhdf5 works, so while a crafted file makes libhdf5
loop (two fuzzed files do, reading a variable-length attribute) no Python signal
handler runs: Ctrl-C and SIGTERM are ignored. The read therefore happens in a
forked child, before TensorFlow is imported, while the parent waits in
``select`` where signals are honoured. The child leaves a breadcrumb (what it is
about to read) in a shared page, so a timeout or a crash names the object.

Where ``os.fork`` does not exist the work runs in this process.
"""

from __future__ import annotations

import gc
import json
import mmap
import os
import select
import signal
import time
import zipfile
from collections.abc import Callable

from prunectl.core.errors import InvalidModelError, first_line

#: Seconds an inspection may take before the file is refused, plus :data:`TIMEOUT_PER_GB` per GB of file.
#: ``PRUNECTL_READ_TIMEOUT`` (seconds) replaces the base.
TIMEOUT_S = 60.0
TIMEOUT_PER_GB = 30.0
TIMEOUT_ENV = "PRUNECTL_READ_TIMEOUT"
#: Address space the inspecting child may map beyond what it inherits: the inspection reads
#: metadata and attributes only, never weights.
CHILD_MEMORY = 4 << 30
#: Errors of a damaged file, as h5py, zipfile and json raise them.
FILE_ERRORS = (
    OSError,
    RuntimeError,
    KeyError,
    ValueError,
    TypeError,
    EOFError,
    OverflowError,
    MemoryError,
    zipfile.BadZipFile,
)
_CRUMB_BYTES = 4096


def read_timeout(nbytes: int) -> float:
    """The time allowed to inspect a file of ``nbytes``: the base (or ``$PRUNECTL_READ_TIMEOUT``) plus per GB.

    A malformed ``$PRUNECTL_READ_TIMEOUT`` falls back to the default base.
    """
    try:
        base = float(os.environ.get(TIMEOUT_ENV, TIMEOUT_S))
    except ValueError:
        base = TIMEOUT_S
    return max(base, 0.1) + TIMEOUT_PER_GB * nbytes / 1e9


def _short(exc: BaseException) -> str:
    """``exc``'s type and the first line of its message."""
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__


def _outcome(work: Callable[[Callable[[str], None]], None], note: Callable[[str], None], at: list[str]) -> dict:
    try:
        work(note)
    except InvalidModelError as exc:
        return {"invalid": exc.what}
    except FILE_ERRORS as exc:
        return {"invalid": f"reading {at[0]} failed ({_short(exc)})"}
    return {"ok": True}


def run_guarded(
    work: Callable[[Callable[[str], None]], None],
    path,
    timeout: float,
    isolate: bool = True,
) -> None:
    """Run ``work(note)`` in a child process and wait for it where signals are honoured.

    ``work`` calls ``note(what)`` before each read that could hang, and raises
    :class:`InvalidModelError` to refuse the file.

    Args:
        work: the inspection.
        path: the file inspected, for error messages.
        timeout: seconds to wait for the child.
        isolate: fork a child (False, or no ``os.fork``: run ``work`` here).

    Raises:
        InvalidModelError: ``work`` refused the file or failed reading it, did not
            finish within ``timeout``, or crashed the child.
        KeyboardInterrupt, Terminated: re-raised after the child is killed and reaped.
        RuntimeError: the child failed for a reason that is not the file's.
    """
    at = ["the file"]

    def here(what: str) -> None:
        at[0] = what

    if not isolate or not hasattr(os, "fork"):
        outcome = _outcome(work, here, at)
        if "invalid" in outcome:
            raise InvalidModelError(path, outcome["invalid"])
        return
    crumb = mmap.mmap(-1, _CRUMB_BYTES)
    read_end, write_end = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        status = 1
        try:
            # No collection in the child: a cycle of the parent's (a TensorFlow object, say) could run a
            # finalizer that waits for a thread fork did not copy, and hang a file that is fine.
            gc.disable()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _die_with(parent)
            _bound_memory()
            os.close(read_end)

            def note(what: str) -> None:
                here(what)
                data = what.encode("utf-8", "replace")[: _CRUMB_BYTES - 4]
                crumb[:4] = len(data).to_bytes(4, "little")
                crumb[4 : 4 + len(data)] = data

            try:
                outcome = _outcome(work, note, at)
            except BaseException as exc:  # a fault in prunectl: reported, not disguised as a bad file
                outcome = {"fail": _short(exc)}
            message = json.dumps(outcome).encode()
            while message:
                message = message[os.write(write_end, message) :]
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    received = b""
    try:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _kill(pid)
                raise InvalidModelError(path, f"reading {_last(crumb)} did not finish in {timeout:.0f} s")
            # Short waits: a signal delivered to another thread (rich's refresh thread, say) does not interrupt
            # this select, and Python runs its handler only when the main thread comes back to bytecode.
            ready, _, _ = select.select([read_end], [], [], min(remaining, 0.1))
            if ready:
                piece = os.read(read_end, 65536)
                if not piece:
                    break
                received += piece
        _, status = os.waitpid(pid, 0)
    except BaseException:
        _kill(pid)
        raise
    finally:
        os.close(read_end)
        last = _last(crumb)
        crumb.close()
    if os.WIFSIGNALED(status):
        raise InvalidModelError(path, f"reading {last} crashed the file reader (signal {os.WTERMSIG(status)})")
    try:
        outcome = json.loads(received)
    except ValueError:
        raise RuntimeError(f"the file inspection ended without a result (exit status {status})") from None
    if "invalid" in outcome:
        raise InvalidModelError(path, outcome["invalid"])
    if "fail" in outcome:
        raise RuntimeError(f"the file inspection failed: {outcome['fail']}")


def _last(crumb: mmap.mmap) -> str:
    size = int.from_bytes(crumb[:4], "little")
    return crumb[4 : 4 + size].decode("utf-8", "replace") if size else "the file"


def _bound_memory() -> None:
    """Cap the child's address space at :data:`CHILD_MEMORY` beyond what it has mapped already (Linux).

    A crafted variable-length attribute can declare gigabytes; libhdf5 then
    fails its allocation (a refused file) instead of exhausting the machine.
    """
    try:
        import resource

        with open("/proc/self/statm") as statm:
            mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = mapped + CHILD_MEMORY
        if hard == resource.RLIM_INFINITY or limit < hard:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (OSError, ValueError, ImportError):
        pass


def _die_with(parent: int) -> None:
    """Have the kernel SIGKILL this child when its parent dies (Linux), whatever the parent's signal handlers do.

    A parent killed by a signal it does not handle would otherwise leave the
    child looping in libhdf5 for ever.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _kill(pid: int) -> None:
    """SIGKILL and reap the child (it may be looping in C, deaf to anything gentler)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
