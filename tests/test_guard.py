"""Hostile and broken model files are refused before any work: only the input file is read, resources are bounded.

Each test crafts one file with h5py or zipfile and runs ``prune`` and ``report`` on it
through the CLI: one exact ``Error:`` line, exit 1, the input unchanged and nothing left
behind, neither beside the input nor in the temporary directory (pointed into the
snapshotted folder for these tests).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import invoke, run
from test_cli_errors import fails, snapshot

from prunectl.core.errors import InvalidModelError
from prunectl.core.io import guard
from prunectl.core.io.watchdog import run_guarded

WEIGHTS = "model.weights.h5"
COMMANDS = [
    pytest.param(lambda path: ("prune", path, "--threshold", "0.1"), id="prune"),
    pytest.param(lambda path: ("report", path), id="report"),
]
FORMATS = [".h5", ".keras"]
SECRET = b"TOPSECRET-" * 8


@pytest.fixture
def folder(models, monkeypatch) -> Path:
    """The private model folder, holding the system temp dir too, so a leftover temporary file fails ``fails``."""
    tmp = models / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return models


def bias_path(h5: h5py.File) -> str:
    """Path of the first layer's bias dataset (d1) inside a weights file."""
    found = []
    h5.visititems(lambda n, o: found.append(o.name) if isinstance(o, h5py.Dataset) and "optimizer" not in n else None)
    # .h5 names it /model_weights/d1/seq/d1/bias; .keras /layers/dense/vars/1.
    return next(n for n in sorted(found) if n.endswith("/bias") or n.endswith("/vars/1"))


def rewrite_keras(source: Path, target: Path, replace=None, weights_type=zipfile.ZIP_STORED, extra=()) -> None:
    """Copy a .keras archive member by member, replacing some members' bytes and adding ``extra`` (name, bytes)."""
    replace = replace or {}
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for name in src.namelist():
            data = replace.get(name, src.read(name))
            kind = weights_type if name == WEIGHTS else zipfile.ZIP_STORED
            dst.writestr(name, data, compress_type=kind)
        for name, data in extra:
            dst.writestr(name, data, compress_type=zipfile.ZIP_STORED)


def craft(folder: Path, fmt: str, edit) -> tuple[Path, str]:
    """A copy of the sequential model whose weights HDF5 file ``edit(h5, bias_path)`` changed.

    Returns:
        The crafted file and the name the error gives d1's bias in it, e.g.
        ``model.weights.h5 /layers/d1/vars/1`` for a ``.keras``.
    """
    path = folder / f"crafted{fmt}"
    work = path if fmt == ".h5" else folder.parent / f"{folder.name}-weights.h5"
    if fmt == ".h5":
        shutil.copy(folder / "sequential.h5", path)
    else:
        with zipfile.ZipFile(folder / "sequential.keras") as src:
            work.write_bytes(src.read(WEIGHTS))
    with h5py.File(work, "a") as h5:
        name = bias_path(h5)
        edit(h5, name)
    if fmt == ".h5":
        return path, name
    rewrite_keras(folder / "sequential.keras", path, {WEIGHTS: work.read_bytes()})
    work.unlink()
    return path, f"{WEIGHTS} {name}"


def invalid_line(path: Path, what: str) -> str:
    return f"Error: {path} is not a valid Keras model: {what}"


def replace_dataset(h5: h5py.File, name: str) -> tuple[tuple, np.dtype]:
    """Delete dataset ``name``, returning its shape and dtype."""
    old = h5[name]
    shape, dtype = old.shape, old.dtype
    del h5[name]
    return shape, dtype


def source_file(folder: Path) -> Path:
    """Another HDF5 file (outside the model folder) that links and views can point into."""
    other = folder.parent / f"{folder.name}-other.h5"
    with h5py.File(other, "w") as h5:
        h5["data"] = np.frombuffer(SECRET[:20], dtype="float32")
    return other


# --- only the input file is read -------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_external_storage_is_refused_and_never_read(folder, fmt, command):
    secret = folder.parent / f"{folder.name}-secret.bin"
    secret.write_bytes(SECRET)

    def edit(h5, name):
        shape, dtype = replace_dataset(h5, name)
        h5.create_dataset(name, shape, dtype, external=[(str(secret), 0, h5py.h5f.UNLIMITED)])

    path, name = craft(folder, fmt, edit)
    line = fails(
        folder,
        *command(path),
        line=invalid_line(path, f"dataset {name} is stored in an external file ({str(secret)!r})"),
    )
    assert "TOPSECRET" not in line
    assert not any(p.is_file() and b"TOPSECRET" in p.read_bytes() for p in folder.rglob("*"))


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_virtual_dataset_is_refused(folder, fmt, command):
    other = source_file(folder)

    def edit(h5, name):
        shape, dtype = replace_dataset(h5, name)
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[:] = h5py.VirtualSource(str(other), "data", shape=(5,))[: shape[0]]
        h5.create_virtual_dataset(name, layout)

    path, name = craft(folder, fmt, edit)
    fails(
        folder,
        *command(path),
        line=invalid_line(path, f"dataset {name} is a virtual dataset (its data lives in other files)"),
    )


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_external_link_is_refused(folder, fmt, command):
    other = source_file(folder)

    def edit(h5, name):
        replace_dataset(h5, name)
        h5[name] = h5py.ExternalLink(str(other), "/data")

    path, name = craft(folder, fmt, edit)
    fails(
        folder,
        *command(path),
        line=invalid_line(path, f"{name} is an external link to {str(other)!r}:/data (outside the file)"),
    )


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("target", ["kernel", "/nowhere"], ids=["inside", "dangling"])
def test_soft_link_is_refused(folder, fmt, command, target):
    def edit(h5, name):
        replace_dataset(h5, name)
        resolved = name.rsplit("/", 1)[0] + ("/kernel" if fmt == ".h5" else "/0") if target == "kernel" else target
        edit.target = resolved
        h5[name] = h5py.SoftLink(resolved)

    path, name = craft(folder, fmt, edit)
    fails(
        folder,
        *command(path),
        line=invalid_line(path, f"{name} is a soft link to {edit.target} (Keras writes no links)"),
    )


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_user_defined_filter_is_refused(folder, fmt, command):
    def edit(h5, name):
        shape, dtype = replace_dataset(h5, name)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk(shape)
        # An LZ4 plugin's filter id: optional, so libhdf5 writes the data unfiltered without the plugin.
        dcpl.set_filter(32004, h5py.h5z.FLAG_OPTIONAL)
        space = h5py.h5s.create_simple(shape)
        h5py.h5d.create(h5.id, name.encode(), h5py.h5t.py_create(dtype), space, dcpl=dcpl)
        h5[name][...] = np.ones(shape, dtype)

    path, name = craft(folder, fmt, edit)
    fails(
        folder,
        *command(path),
        line=invalid_line(path, f"dataset {name} uses filter 32004 (unnamed), which needs a plugin"),
    )


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_vlen_dataset_is_refused(folder, fmt, command):
    def edit(h5, name):
        replace_dataset(h5, name)
        h5.create_dataset(name, data=["a", "b"], dtype=h5py.string_dtype())

    path, name = craft(folder, fmt, edit)
    fails(folder, *command(path), contains=[f"dataset {name} has a variable-length or reference dtype"])


# --- bounded resources -----------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_terabyte_dataset_is_refused(folder, fmt, command):
    """A few-KB file declaring a 4 TB chunked dataset (unallocated chunks read as fill values)."""

    def edit(h5, name):
        replace_dataset(h5, name)
        h5.create_dataset(name, shape=(1 << 40,), dtype="float32", chunks=(1 << 16,))

    path, name = craft(folder, fmt, edit)
    assert path.stat().st_size < 1 << 20
    fails(
        folder,
        *command(path),
        line=invalid_line(
            path, f"dataset {name} declares {4 << 40:,} bytes but stores only 0 (more than {guard.DATASET_MAX_RATIO}x)"
        ),
    )


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_deeply_nested_config_is_one_line(folder, fmt, command):
    deep = "[" * 100_000 + "]" * 100_000
    if fmt == ".h5":
        path = folder / "deep.h5"
        shutil.copy(folder / "sequential.h5", path)
        with h5py.File(path, "a") as h5:
            h5.attrs["model_config"] = deep
        what = "attribute model_config nests 100000 levels deep, more than the limit of 200"
    else:
        path = folder / "deep.keras"
        rewrite_keras(folder / "sequential.keras", path, {"config.json": deep.encode()})
        what = "config.json nests 100000 levels deep, more than the limit of 200"
    fails(folder, *command(path), line=invalid_line(path, what))


def test_json_depth_ignores_brackets_in_strings():
    assert guard.json_depth(b'{"a": ["[[[[", {"b": "}}}"}]}') == 3
    assert guard.json_depth(b'"\\"[]') == 1
    assert guard.json_depth(b"1") == 0


# --- .keras archives -------------------------------------------------------------------------


def flip_byte_in_member(path: Path, name: str, at: float = 0.5) -> None:
    """Flip one byte in the middle of a member's stored data, leaving the directory (and its CRC) as it was."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
        start = guard.member_data_offset(path, info, path.stat().st_size)
    with open(path, "r+b") as raw:
        raw.seek(start + int(info.compress_size * at))
        byte = raw.read(1)
        raw.seek(-1, os.SEEK_CUR)
        raw.write(bytes([byte[0] ^ 0x55]))


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("member", [WEIGHTS, "config.json"])
def test_zip_crc_damage_is_refused(folder, command, member):
    path = folder / "damaged.keras"
    rewrite_keras(folder / "sequential.keras", path)  # every member stored: a flip changes data, not deflate
    flip_byte_in_member(path, member)
    fails(folder, *command(path), line=invalid_line(path, f"zip member {member} fails its CRC-32 check"))


@pytest.mark.parametrize("command", COMMANDS)
def test_duplicate_members_are_refused(folder, command):
    path = folder / "duplicate.keras"
    with pytest.warns(UserWarning, match="Duplicate name"):
        rewrite_keras(folder / "sequential.keras", path, extra=[("config.json", b"{}")])
    fails(folder, *command(path), line=invalid_line(path, "zip member config.json appears more than once"))


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    "name, what",
    [
        ("config.json/", "would make member 'config.json' a folder"),
        ("model.weights.h5/x", "would make member 'model.weights.h5' a folder"),
        ("/etc/evil", "has an absolute path"),
        ("assets/../../evil", "has a path that leaves the archive ('..')"),
        ("assets\\evil", "has a backslash in its name"),
    ],
)
def test_member_names_that_leave_the_archive_are_refused(folder, command, name, what):
    path = folder / "escape.keras"
    rewrite_keras(folder / "sequential.keras", path, extra=[(name, b"")])
    fails(folder, *command(path), line=invalid_line(path, f"zip member {name!r} {what}"))


def test_keras_refuses_a_folder_shadowing_a_member(folder):
    keras = pytest.importorskip("keras")
    path = folder / "escape.keras"
    rewrite_keras(folder / "sequential.keras", path, extra=[("config.json/", b"")])
    with pytest.raises(OSError):
        keras.models.load_model(path, compile=False)


@pytest.mark.parametrize("encoding", ["ascii", "utf-8"])
def test_string_attribute_holding_bytes_outside_its_encoding_is_copied_as_is(folder, encoding):
    """A flipped bit in a text attribute: Keras reads the file, so prune copies the bytes rather than failing."""
    keras = pytest.importorskip("keras")
    path, output = folder / "flipped.h5", folder / "out.h5"
    shutil.copy(folder / "sequential.h5", path)
    with h5py.File(path, "r+") as h5:
        h5.attrs.create("keras_version", b"3.1\xb5.1", dtype=h5py.string_dtype(encoding))
    run("prune", path, "--threshold", "0.1", "-o", output)
    with h5py.File(output, "r") as h5:
        copied = h5.attrs["keras_version"]
        assert h5py.check_string_dtype(h5.attrs.get_id("keras_version").dtype).encoding == encoding
    assert copied.encode("utf-8", "surrogateescape") == b"3.1\xb5.1"
    keras.models.load_model(output, compile=False)


@pytest.mark.parametrize("command", COMMANDS)
def test_too_many_members_are_refused(folder, command):
    path = folder / "crowded.keras"
    count = guard.MAX_ZIP_MEMBERS + 1 - 3
    rewrite_keras(folder / "sequential.keras", path, extra=[(f"assets/{i}", b"") for i in range(count)])
    fails(
        folder,
        *command(path),
        line=invalid_line(path, f"archive holds {guard.MAX_ZIP_MEMBERS + 1:,} members, more than the limit of 10,000"),
    )


def write_bomb(path: Path, source: Path, size: int = 2 << 30) -> None:
    """``source``'s members plus an asset declaring ``size`` bytes of zeros, streamed (never held in memory)."""
    rewrite_keras(source, path)
    info = zipfile.ZipInfo("assets/big.bin")
    info.compress_type = zipfile.ZIP_DEFLATED
    info._compresslevel = 9
    zeros = bytes(64 << 20)
    with zipfile.ZipFile(path, "a") as archive, archive.open(info, "w", force_zip64=True) as member:
        for _ in range(size // len(zeros)):
            member.write(zeros)


@pytest.fixture(scope="module")
def bomb(model_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.keras"
    write_bomb(path, model_dir / "sequential.keras")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("command", ["report", "prune"])
def test_zip_bomb_member_is_refused_in_bounded_memory(folder, bomb, command):
    """A few-MB .keras holding a 2 GiB asset: refused without reading it, peak memory far below its size."""
    path = folder / "bomb.keras"
    shutil.copy(bomb, path)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("assets/big.bin")
    assert path.stat().st_size < 8 << 20
    script = textwrap.dedent(
        f"""
        import resource, subprocess, sys
        done = subprocess.run([sys.executable, "-m", "prunectl", "{command}", {str(path)!r}]
                              + (["--threshold", "0.1"] if "{command}" == "prune" else []),
                              capture_output=True, text=True)
        print(done.returncode)
        print(done.stderr.strip())
        print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        """
    )
    before = snapshot(folder)
    code, line, peak_kb = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TMPDIR": str(folder / "tmp")},
    ).stdout.splitlines()
    assert (code, line) == (
        "1",
        invalid_line(
            path,
            f"zip member assets/big.bin declares {2 << 30:,} bytes from {info.compress_size:,} compressed "
            "(more than 100x, a zip bomb)",
        ),
    )
    assert int(peak_kb) * 1024 < 500 << 20
    assert snapshot(folder) == before


def test_assets_are_copied_to_the_output(folder):
    """A member beside config, metadata and weights survives a prune byte for byte (streamed, not held)."""
    path = folder / "assets.keras"
    payload = np.random.default_rng(0).bytes(3 << 20)
    rewrite_keras(folder / "sequential.keras", path, extra=[("assets/vocab.bin", payload)])
    out = folder / "out.keras"
    result = invoke("prune", path, "--threshold", "0.1", "-o", out)
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(out) as archive:
        assert archive.read("assets/vocab.bin") == payload


@pytest.mark.parametrize("command", COMMANDS)
def test_deflated_weights_member_is_extracted_to_the_temp_dir_and_removed(folder, command):
    path = folder / "deflated.keras"
    rewrite_keras(folder / "sequential.keras", path, weights_type=zipfile.ZIP_DEFLATED)
    tmp = folder / "tmp"
    seen: list[list[str]] = []
    real_extract = __import__("prunectl.core.io.modelfile", fromlist=["_extract"])._extract

    def spy(*args):
        made = real_extract(*args)
        seen.append(sorted(os.listdir(tmp)))
        return made

    before = set(os.listdir(folder))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("prunectl.core.io.modelfile._extract", spy)
        result = invoke(*command(path))
    assert result.exit_code == 0, result.output
    assert seen and seen[0] and all(name.startswith("prunectl-") for name in seen[0])
    assert os.listdir(tmp) == []
    assert set(os.listdir(folder)) - before <= {"deflated.pruned.keras", "deflated.pruned.keras.report.json"}


# --- a read that hangs inside libhdf5 --------------------------------------------------------


def hanging_h5(folder: Path) -> Path:
    """A model .h5 on which libhdf5 loops for ever reading an attribute (found by fuzzing).

    d1's ``weight_names`` is rewritten as variable-length strings (kept in the file's
    global heap), then the heap object holding ``d1/kernel:0`` is given a length of 255:
    reading the attribute then never returns, and h5py holds the GIL meanwhile.
    """
    path = folder / "hang.h5"
    shutil.copy(folder / "sequential.h5", path)
    with h5py.File(path, "a") as h5:
        h5["model_weights/d1"].attrs["weight_names"] = ["d1/kernel:0", "d1/bias:0"]
    data = bytearray(path.read_bytes())
    at = data.find(b"d1/kernel:0\0")
    # A global heap object: index (2 bytes), reference count (2), reserved (4), size (8), data.
    assert data[at - 8 : at] == (11).to_bytes(8, "little")
    data[at - 8] = 0xFF
    path.write_bytes(bytes(data))
    return path


HANG_AT = "attribute weight_names of /model_weights/d1"


@pytest.mark.parametrize("command", COMMANDS)
def test_hang_ends_at_the_read_timeout(folder, command, monkeypatch):
    path = hanging_h5(folder)
    monkeypatch.setenv("PRUNECTL_READ_TIMEOUT", "1")
    fails(
        folder,
        *command(path),
        line=invalid_line(path, f"reading {HANG_AT} did not finish in 1 s"),
    )


def test_interrupt_kills_and_reaps_the_reading_child(folder):
    """Ctrl-C while libhdf5 loops in the child: KeyboardInterrupt reaches the caller, the child is gone."""
    path = hanging_h5(folder)
    pid_file = folder.parent / f"{folder.name}-child.pid"

    def work(note):
        pid_file.write_text(str(os.getpid()))
        guard.inspect_model(path, "h5", None, note)

    def interrupt(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 2.0)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_guarded(work, path, timeout=600)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    child = int(pid_file.read_text())
    with pytest.raises(ChildProcessError):  # already reaped: not a zombie, not running
        os.waitpid(child, os.WNOHANG)
    assert not Path(f"/proc/{child}").exists()


def test_child_crash_names_the_object():
    def work(note):
        note("dataset /model_weights/d1/kernel")
        os.kill(os.getpid(), signal.SIGSEGV)

    with pytest.raises(InvalidModelError) as caught:
        run_guarded(work, "m.h5", timeout=60)
    assert str(caught.value) == (
        "m.h5 is not a valid Keras model: reading dataset /model_weights/d1/kernel crashed the file reader (signal 11)"
    )


def test_fault_in_the_inspection_is_not_blamed_on_the_file():
    def work(note):
        raise ZeroDivisionError("a bug")

    with pytest.raises(RuntimeError, match="ZeroDivisionError: a bug"):
        run_guarded(work, "m.h5", timeout=60)


def test_inspection_without_fork_refuses_the_same(folder):
    path, name = craft(folder, ".h5", lambda h5, n: (replace_dataset(h5, n), h5.__setitem__(n, h5py.SoftLink("/x"))))
    with pytest.raises(InvalidModelError, match="soft link"):
        run_guarded(lambda note: guard.inspect_model(path, "h5", None, note), path, timeout=60, isolate=False)


def _processes_reading(path: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(path).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_a_hanging_read(folder, signum):
    """prunectl in its own process, stuck in libhdf5: the signal ends it and its child, long before the timeout."""
    path = hanging_h5(folder)
    env = {**os.environ, "PRUNECTL_READ_TIMEOUT": "600", "TMPDIR": str(folder / "tmp")}
    before = snapshot(folder)
    proc = subprocess.Popen(
        [sys.executable, "-m", "prunectl", "report", str(path)], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        for _ in range(600):  # until the child is forked (two processes name the file), then into the hang
            if len(_processes_reading(path)) >= 2:
                break
            time.sleep(0.1)
        assert len(_processes_reading(path)) >= 2
        time.sleep(1)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)  # a hang guard only: the read timeout is 600 s
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "Traceback" not in stderr
    for _ in range(100):
        if not _processes_reading(path):
            break
        time.sleep(0.1)
    assert _processes_reading(path) == []
    assert snapshot(folder) == before


def test_inspecting_child_has_bounded_memory():
    """A crafted length cannot make the child map more than CHILD_MEMORY (mapped, never touched, if it could)."""
    import mmap

    from prunectl.core.io.watchdog import CHILD_MEMORY

    def work(note):
        note("a huge attribute")
        mmap.mmap(-1, CHILD_MEMORY + (1 << 30))

    with pytest.raises(InvalidModelError) as caught:
        run_guarded(work, "m.h5", timeout=60)
    assert str(caught.value).startswith("m.h5 is not a valid Keras model: reading a huge attribute failed (OSError")
