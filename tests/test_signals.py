"""SIGINT and SIGTERM: exit 130 and 143 with one ``Error:`` line, no temporary file anywhere, the input untouched.

The slow tests run the real executable on a large model (Dense layers of about
50 MB, as .h5 and .keras, file and keras engines) and on a fine-tune of the
committed CNN, and signal it at seeded-random points of the run. A run the signal
came too late for must have finished (exit 0, complete outputs). Each run gets
a fresh TMPDIR, which must be empty afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import pytest
from conftest import SAMPLES, invoke, seeded_keras

from prunectl.core.errors import Terminated
from prunectl.core.io import atomic

EXPECTED = {signal.SIGINT: (130, "Error: interrupted."), signal.SIGTERM: (143, "Error: terminated.")}


@pytest.mark.parametrize(
    ("raised", "code", "line"), [(KeyboardInterrupt, 130, "interrupted"), (Terminated, 143, "terminated")]
)
def test_the_cli_maps_an_interrupt_and_a_termination(models, monkeypatch, raised, code, line):
    from prunectl.core.run import job

    def stop(*args, **kwargs):
        atomic.temporary_file(models, ".left.")  # as if the signal came right after it was created
        raise raised()

    monkeypatch.setattr(job, "run_prune", stop)
    before = sorted(p.name for p in models.iterdir())
    result = invoke("prune", models / "sequential.h5", "--sparsity", "0.5", "-o", models / "o.h5")
    assert (result.exit_code, result.stderr) == (code, f"Error: {line}.\n")
    assert sorted(p.name for p in models.iterdir()) == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_error_after_a_signal_is_reported_as_the_signal(models, monkeypatch, sig):
    # Inside TensorFlow's import a KeyboardInterrupt comes out as an ImportError: the run was still interrupted.
    from prunectl.cli import signals
    from prunectl.core.run import job

    def fails_after_the_signal(*args, **kwargs):
        monkeypatch.setattr(signals, "_received", [sig])
        raise ImportError("initialization failed")

    monkeypatch.setattr(job, "run_prune", fails_after_the_signal)
    result = invoke("prune", models / "sequential.h5", "--sparsity", "0.5", "-o", models / "o.h5")
    assert (result.exit_code, result.stderr) == (EXPECTED[sig][0], EXPECTED[sig][1] + "\n")


def test_a_file_is_registered_before_it_exists(tmp_path, monkeypatch):
    created = []
    real_open = os.open

    def open_then_interrupt(path, *args):
        os.close(real_open(path, *args))
        created.append(Path(path))
        raise KeyboardInterrupt  # between the creation and the code that would have looked after it

    monkeypatch.setattr(atomic.os, "open", open_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_path(tmp_path / "out.h5"):
            pass
    monkeypatch.undo()
    assert created and created[0].exists()
    assert atomic.remove_leftovers() == [str(created[0])]
    assert list(tmp_path.iterdir()) == []


def test_the_scratch_folder_holds_third_party_temporary_folders(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        with atomic.scratch_tempdir():
            tempfile.mkdtemp()  # left behind by its maker
            raise KeyboardInterrupt
    assert tempfile.tempdir == str(tmp_path) and list(tmp_path.iterdir()) == []


# --- the real executable ---------------------------------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> Path:
    """A model of about 50 MB (three 2048x2048 Dense layers), saved as big.h5 and big.keras."""
    keras = seeded_keras()
    folder = tmp_path_factory.mktemp("large")
    model = keras.Sequential(
        [keras.Input((2048,)), *(keras.layers.Dense(2048) for _ in range(3)), keras.layers.Dense(4)]
    )
    model.save(folder / "big.h5")
    model.save(folder / "big.keras")
    return folder


def _handlers_installed(pid: int) -> bool:
    """Whether the process catches SIGTERM yet (so a signal now meets prunectl's handler, not Python's start-up)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def _complete(path: Path) -> bool:
    if path.suffix == ".json":
        return "layers" in json.loads(path.read_text())
    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None and "model.weights.h5" in archive.namelist()
    with h5py.File(path, "r") as f:
        return "model_weights" in f


def _signal_run(source: Path, output: Path, extra: list[str], sig: int, delay: float, tmp: Path) -> None:
    """Run a prune, signal it ``delay`` seconds after its handlers are installed, and check what it left."""
    folder, tmpdir = output.parent, tmp / "TMPDIR"
    tmpdir.mkdir()
    before = _digest(source)
    proc = subprocess.Popen(
        [sys.executable, "-m", "prunectl", "prune", source, "-o", output, "-q", *extra],
        env={**os.environ, "TMPDIR": str(tmpdir), "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while proc.poll() is None and not _handlers_installed(proc.pid):
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    code, line = EXPECTED[sig]
    what = f"{source.name} -> {output.name} {extra}, {signal.Signals(sig).name} after {delay:.2f} s: {stderr[-2000:]}"
    report = output.with_name(f"{output.name}.report.json")
    if proc.returncode == 0:  # it had finished
        assert _complete(output) and _complete(report), what
    else:
        # -q still prints one line per fine-tuning epoch finished before the signal; then the one Error line.
        *before_error, last = stderr.strip().splitlines() or [""]
        assert (proc.returncode, last) == (code, line), what
        assert all(re.match(r"epoch \d+/\d+: ", text) for text in before_error), what
        for written in (output, report):  # an output renamed into place before the signal is whole
            assert not written.exists() or _complete(written), what
    assert set(p.name for p in folder.iterdir()) <= {output.name, report.name}, what
    assert list(tmpdir.iterdir()) == [], what
    assert _digest(source) == before, what


# (source, output suffix, extra arguments, the span in seconds the signal falls in)
RUNS = [
    ("big.h5", ".h5", ["--sparsity", "0.5", "--engine", "file"], 1.5),
    ("big.keras", ".keras", ["--sparsity", "0.5", "--engine", "file"], 1.5),
    ("big.h5", ".keras", ["--sparsity", "0.5", "--engine", "keras"], 7.0),
]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the process's signal handlers")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize(("source", "suffix", "extra", "span"), RUNS, ids=["h5-file", "keras-file", "h5-to-keras"])
def test_a_signal_during_a_prune_of_a_large_model(large, tmp_path, sig, source, suffix, extra, span):
    rng = random.Random(f"{source}{suffix}{sig}")
    out = tmp_path / "out"
    out.mkdir()
    _signal_run(large / source, out / f"o{suffix}", extra, sig, rng.uniform(0, span), tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the process's signal handlers")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_a_fine_tune(tmp_path, sig):
    rng = random.Random(f"finetune{sig}")
    out = tmp_path / "out"
    out.mkdir()
    data = SAMPLES / "digits_train.npz"
    extra = ["--sparsity", "0.5", "--finetune-epochs", "4", "--data", str(data)]
    _signal_run(SAMPLES / "digits_cnn.keras", out / "o.keras", extra, sig, rng.uniform(1.0, 8.0), tmp_path)
