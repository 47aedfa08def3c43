"""Multi-worker fine-tuning: real ``prunectl`` processes on 127.0.0.1 under MultiWorkerMirroredStrategy.

Every process started here is bounded by a timeout and killed if it runs past it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from independent import read_weights

PRUNECTL = Path(sys.executable).with_name("prunectl")
LIMIT = 240  # seconds any one process may run


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(ports: list[int], index: int) -> str:
    workers = [f"127.0.0.1:{p}" for p in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def start(args: list, config: str | None, folder: Path, name: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    if config is not None:
        env["TF_CONFIG"] = config
    out = open(folder / f"{name}.out", "w")
    err = open(folder / f"{name}.err", "w")
    return subprocess.Popen([str(PRUNECTL), *map(str, args)], stdout=out, stderr=err, env=env, cwd=folder)


def finish(process: subprocess.Popen, limit: float = LIMIT) -> int:
    try:
        return process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"{process.args} ran past {limit} s")


def text(folder: Path, name: str) -> str:
    return (folder / name).read_text()


@pytest.fixture
def cluster_data(samples):
    """The sample MLP, 101 training samples (a final global batch of 5 = 3 + 2 across two workers) and 33 validation
    samples (a final batch of 1: one worker evaluates an empty slice)."""
    with np.load(samples / "digits_train.npz") as train:
        np.savez(samples / "train.npz", x=train["x"][:101], y=train["y"][:101])
        np.savez(samples / "val.npz", x=train["x"][101:134], y=train["y"][101:134])
    return samples


def tune(folder: Path, *extra) -> list:
    return [
        "prune",
        folder / "digits_mlp.keras",
        "--sparsity",
        "0.75",
        "--schedule",
        "polynomial",
        "--finetune-epochs",
        "2",
        "--data",
        folder / "train.npz",
        "--val-data",
        folder / "val.npz",
        "--batch-size",
        "16",
        "--learning-rate",
        "0.01",
        "--seed",
        "7",
        *extra,
    ]


# Everything fine-tuning does, on two workers: the L1 penalty (shared out among the replicas), distillation
# (the term on each replica's slice), a learning-rate schedule with warm-up, and plots on the chief.
EVERYTHING = ["--l1", "0.0005", "--distill", "0.5", "--lr-schedule", "cosine", "--warmup", "0.1", "--plots", "plots"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], EVERYTHING], ids=["plain", "l1-distill-cosine-plots"])
def test_two_workers_train_one_model(cluster_data, extra):
    folder = cluster_data
    ports = free_ports(2)
    strategy = ["--strategy", "multiworker", "--worker-timeout", "60", *extra]
    chief = start(tune(folder, *strategy, "-o", "chief.keras"), tf_config(ports, 0), folder, "w0")
    other = start(tune(folder, *strategy, "-o", "other.keras"), tf_config(ports, 1), folder, "w1")
    single = start(tune(folder, *extra, "-o", "single.keras"), None, folder, "single")
    codes = [finish(p) for p in (chief, other, single)]
    assert codes == [0, 0, 0], [text(folder, f"{n}.err") for n in ("w0", "w1", "single")]

    saved, copy, alone = (read_weights(folder / n) for n in ("chief.keras", "other.keras", "single.keras"))
    kernels = [k for k in saved if saved[k].ndim == 2]
    assert len(kernels) == 3
    for key in kernels:
        # Exactly the target sparsity (to a whole weight), from the saved file.
        assert abs(np.count_nonzero(saved[key] == 0) - round(0.75 * saved[key].size)) <= 1, key
    for key in saved:
        np.testing.assert_array_equal(saved[key], copy[key], err_msg=key)  # the workers agree to the bit
        # The same global batches on one process give the same model, up to float summation order.
        np.testing.assert_allclose(saved[key], alone[key], rtol=1e-4, atol=1e-5, err_msg=key)
        if key in kernels:
            np.testing.assert_array_equal(saved[key] == 0, alone[key] == 0, err_msg=key)

    report = json.loads((folder / "chief.keras.report.json").read_text())["finetune"]
    assert report["strategy"] == {
        "name": "multiworker",
        "replicas": 2,
        "task": "worker 0 of 2",
        "chief": True,
        "workers": 2,
    }
    assert report["skipped_per_epoch"] == 0
    alone_report = json.loads((folder / "single.keras.report.json").read_text())["finetune"]
    for when, values in alone_report["evaluation"].items():  # validation summed across both workers
        assert report["evaluation"][when] == pytest.approx(values, rel=1e-4, abs=1e-5), when
    for key, values in alone_report["history"].items():  # training loss (with the L1 penalty) and metrics too
        assert report["history"][key] == pytest.approx(values, rel=1e-4, abs=1e-5), key
    if extra:
        assert report["distillation"]["alpha"] == 0.5 and report["l1"]["penalty"] > 0
        assert sorted(p.name for p in (folder / "plots").iterdir()) == sorted(Path(p).name for p in report["plots"])


@pytest.mark.slow
def test_the_non_chief_writes_nothing_without_output(cluster_data):
    """Also: 97 samples in batches of 16 end in a batch of 1, which cannot give both workers a sample."""
    folder = cluster_data
    with np.load(folder / "train.npz") as train:
        np.savez(folder / "train.npz", x=train["x"][:97], y=train["y"][:97])
    ports = free_ports(2)
    before = sorted(p.name for p in folder.iterdir())
    strategy = ["--strategy", "multiworker", "--worker-timeout", "60", "--finetune-epochs", "1"]
    chief = start(tune(folder, *strategy, "-o", "chief.keras"), tf_config(ports, 0), folder, "w0")
    other = start(tune(folder, *strategy), tf_config(ports, 1), folder, "w1")
    assert [finish(chief), finish(other)] == [0, 0], text(folder, "w1.err")
    after = sorted(p.name for p in folder.iterdir())
    assert sorted(set(after) - set(before)) == [
        "chief.keras",
        "chief.keras.report.json",
        "w0.err",
        "w0.out",
        "w1.err",
        "w1.out",
    ]
    assert text(folder, "w1.out") == ""
    report = json.loads((folder / "chief.keras.report.json").read_text())
    assert report["finetune"]["skipped_per_epoch"] == 1 and report["finetune"]["steps_per_epoch"] == 6
    assert (
        "each epoch skipped its last 1 training sample(s): too few to give each of the 2 replicas one "
        "(a different sample each epoch)" in report["notes"]
    )
    assert text(folder, "w1.err").splitlines()[-1] == (
        "worker 1 of 2: fine-tuned with the cluster (2 replicas); the chief writes the model and the report "
        "(give -o to keep this worker's copy too)"
    )


def _wait_for(path: Path, needle: str, limit: float) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if path.exists() and needle in path.read_text():
            return
        time.sleep(0.2)
    pytest.fail(f"{needle!r} never appeared in {path.name}: {path.read_text() if path.exists() else ''}")


@pytest.mark.slow
def test_a_killed_worker_stops_the_other_with_one_error_line(cluster_data):
    folder = cluster_data
    ports = free_ports(2)
    long = ["--strategy", "multiworker", "--worker-timeout", "20", "--finetune-epochs", "400"]
    chief = start(tune(folder, *long, "-o", "chief.keras"), tf_config(ports, 0), folder, "w0")
    other = start(tune(folder, *long, "-o", "other.keras"), tf_config(ports, 1), folder, "w1")
    try:
        _wait_for(folder / "w0.err", "epoch 2/400", LIMIT)
        other.send_signal(signal.SIGKILL)
        began = time.monotonic()
        code = finish(chief, 120)
        waited = time.monotonic() - began
    finally:
        for p in (chief, other):
            if p.poll() is None:
                p.kill()
                p.wait()
    err = text(folder, "w0.err")
    assert code not in (0, None) and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    assert "lost contact" in errors[0] and "worker" in errors[0], errors[0]
    assert waited < 90, waited
    assert not (folder / "chief.keras").exists() and not (folder / "chief.keras.report.json").exists()


@pytest.mark.slow
def test_a_worker_that_never_starts_is_an_error_in_bounded_time(cluster_data):
    folder = cluster_data
    ports = free_ports(2)
    began = time.monotonic()
    lone = start(
        tune(folder, "--strategy", "multiworker", "--worker-timeout", "15", "-o", "chief.keras"),
        tf_config(ports, 0),
        folder,
        "w0",
    )
    code = finish(lone, 120)
    waited = time.monotonic() - began
    err = text(folder, "w0.err")
    assert code not in (0, None) and "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and err.startswith("Error: "), err
    assert f"127.0.0.1:{ports[1]}" in err, err
    assert waited < 90, waited
    assert not (folder / "chief.keras").exists()
