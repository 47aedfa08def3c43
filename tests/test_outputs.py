"""Outputs are regular files or absent, distinct from each other and from every input; write errors are one line.

Path checks run in-process (CliRunner); a full disk is stood in for by a
subprocess whose file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes writes
fail with EFBIG, which needs no root and no special mount.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from conftest import invoke, run

SPARSE = ("--sparsity", "0.5")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _received(path) -> str:
    return f"Received: {str(path)!r}"


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("option", ["-o", "--report", "--markdown", "--recipe-out"])
def test_a_device_is_never_replaced_even_with_force(models, option):
    model = models / "sequential.h5"
    args = ["-o", models / "o.h5"] if option != "-o" else []
    target = "/dev/full" if option != "-o" else "/dev/null.h5"
    if option == "-o":  # the output's suffix must be a model's: a device reached through a link
        target = models / "dev.h5"
        target.symlink_to("/dev/full")
    result = invoke("prune", model, *SPARSE, *args, option, target, "--force")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: output path is a character device. {_received(target)}"
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert not (models / "o.h5").exists() and not (models / "o.h5.report.json").exists()


def test_a_fifo_or_a_socket_is_never_replaced(models):
    fifo = models / "r.json"
    os.mkfifo(fifo)
    sock_path = models / "s.json"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(sock_path))
        for target, kind in ((fifo, "a FIFO"), (sock_path, "a socket")):
            result = invoke(
                "prune", models / "sequential.h5", *SPARSE, "-o", models / "o.h5", "--report", target, "--force"
            )
            assert result.exit_code == 1
            assert result.stderr.strip() == f"Error: output path is {kind}. {_received(target)}"
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    finally:
        sock.close()
    assert not (models / "o.h5").exists()


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_link_to_the_input_is_the_input(models, link):
    model = models / "sequential.h5"
    before = _digest(model)
    alias = models / "alias.h5"
    alias.symlink_to(model) if link == "symlink" else os.link(model, alias)
    for option in ("-o", "--report"):
        args = ["-o", models / "o.h5", "--report", alias] if option == "--report" else ["-o", alias]
        result = invoke("prune", model, *SPARSE, *args, "--force")
        assert result.exit_code == 1
        assert result.stderr.strip() == f"Error: output would overwrite the input model. {_received(alias)}"
    assert _digest(model) == before
    assert _names(models) == sorted(["alias.h5", *(p for p in _names(models) if p != "alias.h5")])
    assert not (models / "o.h5").exists()


def test_a_data_file_is_an_input_too(samples):
    data = samples / "digits_test.npz"
    before = _digest(data)
    result = invoke(
        "prune", samples / "digits_mlp.h5", *SPARSE, "--max-accuracy-drop", "0.5", "--data", data,
        "-o", samples / "o.h5", "--report", data, "--force",
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: output would overwrite the input file {str(data)!r}. {_received(data)}"
    assert _digest(data) == before and not (samples / "o.h5").exists()


def test_outputs_that_are_one_file_through_links_collide(models):
    model = models / "sequential.h5"
    out = models / "o.h5"
    out.write_bytes(b"old")
    report = models / "r.json"
    os.link(out, report)  # the report path is the output file under another name
    result = invoke("prune", model, *SPARSE, "-o", out, "--report", report, "--force")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: report path is the output model's path. {_received(report)}"
    markdown = models / "md.md"
    markdown.symlink_to(models / "fresh.json")  # a dangling link to the (not yet written) report
    result = invoke(
        "prune", model, *SPARSE, "-o", models / "p.h5", "--report", models / "fresh.json", "--markdown", markdown
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: markdown path is another output's path. {_received(markdown)}"
    assert out.read_bytes() == b"old" and not (models / "p.h5").exists() and not (models / "fresh.json").exists()


def test_a_symlinked_output_is_written_through_and_the_link_kept(models, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    real = elsewhere / "real.h5"
    real.write_bytes(b"old")
    link = models / "o.h5"
    link.symlink_to(real)
    run("prune", models / "sequential.h5", *SPARSE, "-o", link, "--force", "-q")
    assert link.is_symlink() and os.readlink(link) == str(real)
    with h5py.File(real, "r") as f:  # the file the link names is the new model
        assert "model_weights" in f
    assert _names(elsewhere) == ["real.h5"]  # its temporary file went beside it and is gone


def test_report_and_sensitivity_outputs_are_checked_before_any_work(samples):
    model = samples / "digits_mlp.h5"
    before = _digest(model)
    result = invoke("report", model, "--markdown", model)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: output would overwrite the input model. {_received(model)}"
    result = invoke("report", model, "--markdown", "/dev/full")
    assert result.stderr.strip() == f"Error: output path is a character device. {_received('/dev/full')}"
    assert result.exit_code == 1
    data = samples / "digits_test.npz"
    result = invoke("sensitivity", model, "--data", data, "--budget", "0.01", "--recipe-out", "/dev/full", "--force")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: output path is a character device. {_received('/dev/full')}"
    assert _digest(model) == before


def test_an_os_error_while_writing_is_one_line_and_leaves_nothing(models, monkeypatch):
    from prunectl.core.io import compress

    def fail(self, group, name, data):
        # What h5py raises when libhdf5's write fails: several lines, no errno.
        raise OSError(
            "[Errno 27] Unable to synchronously write data (file write failed: time = Mon Nov 23, filename = 'x',\n"
            " file descriptor = 5, errno = 27, error message = 'File too large', buf = 0x1)"
        )

    monkeypatch.setattr(compress.ChunkWriter, "write", fail)
    before = _names(models)
    out = models / "o.h5"
    result = invoke("prune", models / "sequential.h5", *SPARSE, "-o", out)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: cannot write {out}: File too large. {_received(out)}"
    assert _names(models) == before


def test_an_unexpected_os_error_is_one_line(models, monkeypatch):
    from prunectl.core.run import job

    def fail(*args, **kwargs):
        raise OSError("first line\nsecond line")

    monkeypatch.setattr(job, "run_prune", fail)
    result = invoke("prune", models / "sequential.h5", *SPARSE, "-o", models / "o.h5")
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: first line."


def _limited(limit: int):
    def preexec():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


@pytest.mark.slow
@pytest.mark.parametrize(
    ("source", "output", "engine"),
    [("digits_mlp.h5", "o.h5", "file"), ("digits_mlp.keras", "o.keras", "file"), ("digits_mlp.h5", "o.keras", "keras")],
)
def test_a_full_disk_is_one_line_and_leaves_nothing(samples, tmp_path_factory, source, output, engine):
    folder = tmp_path_factory.mktemp("out")
    tmpdir = tmp_path_factory.mktemp("tmp")
    model = samples / source
    before = _digest(model)
    proc = subprocess.run(
        [sys.executable, "-m", "prunectl", "prune", model, *SPARSE, "-o", folder / output, "--engine", engine, "-q"],
        env={**os.environ, "TMPDIR": str(tmpdir), "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        preexec_fn=_limited(100_000),  # the model is about 640 KB
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == f"Error: cannot write {folder / output}: File too large. {_received(folder / output)}"
    assert _names(folder) == [] and _names(tmpdir) == []
    assert _digest(model) == before
