"""`prunectl prune` with structural options: files in both formats, reports, dry runs, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import run
from independent import kernel, read_weights
from test_cli_errors import fails, snapshot

FORMATS = [".h5", ".keras"]


@pytest.mark.slow
def test_pruned_files_have_fewer_units_and_load_in_plain_keras(samples):
    outputs = [samples / f"small_{fmt[1:]}{fmt}" for fmt in FORMATS]
    for fmt, output in zip(FORMATS, outputs):
        run("prune", samples / f"digits_cnn{fmt}", "--neuron-ratio", "0.5", "--round-to", "8", "-o", output, "-q")
        assert kernel(output, "conv1").shape == (3, 3, 1, 16)
        assert kernel(output, "conv2").shape == (3, 3, 16, 32)
        assert kernel(output, "fc1").shape == (4 * 4 * 32, 64)
        assert kernel(output, "head").shape == (64, 10)
    script = (
        "import sys, numpy as np, keras\n"
        f"x = np.load({str(samples / 'digits_test.npz')!r})['x'][:8]\n"
        f"for path in {[str(o) for o in outputs]!r}:\n"
        "    assert keras.models.load_model(path).predict_on_batch(x).shape == (8, 10)\n"
        "assert not [n for n in sys.modules if n.startswith('prunectl')]\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-2000:]


def test_report_records_plan_units_flops_and_benchmark(samples):
    report = json.loads(
        run(
            "prune",
            samples / "digits_mlp.keras",
            "--neuron-criterion",
            "activation",
            "--neuron-ratio",
            "0.5",
            "--data",
            samples / "digits_train.npz",
            "--benchmark",
            "--json",
            "-q",
        ).stdout
    )
    plan = report["structural"]
    rows = {r["layer"]: r for r in plan["layers"]}
    assert (rows["fc1"]["units_before"], rows["fc1"]["units_after"]) == (256, 128)
    assert (rows["head"]["units_before"], rows["head"]["units_after"]) == (10, 10)
    assert rows["fc2"]["params_after"] == 128 * 64 + 64 and rows["fc2"]["flops_after"] == 128 * 64
    (fc1,) = [g for g in plan["groups"] if g["producers"] == ["fc1"]]
    assert len(fc1["dropped"]) == 128 and fc1["frozen"] is None
    assert plan["criterion"] == {"name": "activation", "batch_size": 256}
    assert report["options"]["neuron_ratio"] == 0.5 and report["options"]["neuron_criterion"] == "activation"
    assert set(report["benchmark"]) == {
        "batch_size",
        "repeats",
        "statistic",
        "original_ms",
        "pruned_ms",
        "floor_ms",
        "speedup",
    }
    assert report["benchmark"]["batch_size"] == 256
    weights = read_weights(samples / "digits_mlp.pruned.keras")
    assert sum(v.size for v in weights.values()) == plan["totals"]["params"]["after"]


def test_neurons_then_weights_in_one_run(samples):
    # Units of fc2 have L1 norms from about 15 to 30.
    run("prune", samples / "digits_mlp.h5", "--neuron-threshold", "18", "--sparsity", "0.5", "-q")
    fc2 = kernel(samples / "digits_mlp.pruned.h5", "fc2")
    assert fc2.shape[1] < 128 and np.count_nonzero(fc2 == 0) == int(np.ceil(0.5 * fc2.size))


def test_dry_run_prints_the_plan_and_writes_nothing(samples):
    before = snapshot(samples)
    result = run("prune", samples / "digits_cnn.h5", "--neuron-ratio", "0.5", "--dry-run")
    assert snapshot(samples) == before
    assert "Structural plan" in result.stderr and "conv2" in result.stderr and "32 -> 16" in result.stderr
    assert "Dry run: no model or report written." in result.stderr and result.stdout == ""
    report = json.loads(
        run("prune", samples / "digits_cnn.h5", "--neuron-ratio", "0.5", "--dry-run", "--json", "-q").stdout
    )
    assert report["kind"] == "plan" and report["structural"]["totals"]["flops"]["ratio"] > 2
    assert snapshot(samples) == before


def _bad(option: str, message: str) -> str:
    return f"Error: Invalid value for '{option}': {message}"


BAD = [
    pytest.param(
        ["--neuron-ratio", "1.5"],
        _bad("--neuron-ratio", "--neuron-ratio must be a finite number in (0, 1). Received: --neuron-ratio=1.5"),
        2,
        id="ratio",
    ),
    pytest.param(
        ["--neuron-ratio", "0"],
        _bad("--neuron-ratio", "--neuron-ratio must be a finite number in (0, 1). Received: --neuron-ratio=0.0"),
        2,
        id="ratio0",
    ),
    pytest.param(
        ["--neuron-threshold", "-1"],
        _bad(
            "--neuron-threshold", "--neuron-threshold must be a finite number >= 0. Received: --neuron-threshold=-1.0"
        ),
        2,
        id="threshold",
    ),
    pytest.param(
        ["--neuron-ratio", "0.5", "--round-to", "0"],
        _bad("--round-to", "--round-to must be an integer >= 1. Received: --round-to=0"),
        2,
        id="round-to",
    ),
    pytest.param(
        ["--neuron-ratio", "0.5", "--neuron-criterion", "taylor"],
        _bad("--neuron-criterion", "'taylor' is not one of 'activation', 'apoz', 'l1', 'l2'."),
        2,
        id="criterion",
    ),
    pytest.param(
        ["--neuron-ratio", "0.5", "--neuron-threshold", "0.1"],
        "Error: give only one of --neuron-threshold and --neuron-ratio. "
        "Received: --neuron-threshold 0.1 --neuron-ratio 0.5",
        2,
        id="both",
    ),
    pytest.param(
        ["--round-to", "8"],
        "Error: --round-to needs --neuron-threshold or --neuron-ratio. Received: --round-to 8",
        2,
        id="round-to-alone",
    ),
    pytest.param(
        ["--threshold", "0.1", "--dry-run"],
        "Error: --dry-run needs --neuron-threshold or --neuron-ratio. Received: --dry-run",
        2,
        id="dry-run-without-neurons",
    ),
    pytest.param(
        ["--neuron-ratio", "0.5", "--neuron-criterion", "apoz"],
        "Error: the apoz criterion needs calibration data; give --data FILE. Received: --neuron-criterion apoz",
        2,
        id="no-data",
    ),
    pytest.param(
        ["--neuron-ratio", "0.5", "--engine", "file"],
        "Error: the file engine runs weight steps only; use --engine keras or auto. Received: --engine file",
        2,
        id="file-engine",
    ),
    pytest.param(
        ["--neuron-ratio", "0.5", "--exclude", "nomatch"],
        "Error: --exclude pattern matches no prunable layer (prunable layers: d1, d2). Received: 'nomatch'",
        1,
        id="exclude-nothing",
    ),
    pytest.param(
        ["--neuron-ratio", "0.5", "--exclude", "d1"],
        "Error: no prunable units: every layer's units reach a model output, a boundary, or are not "
        "selected (boundaries: none). Received: include=[], exclude=['d1']",
        1,
        id="nothing-prunable",
    ),
    pytest.param(
        ["--neuron-ratio", "0.5", "--data", "missing.npz", "--neuron-criterion", "activation"],
        "Error: data file not found. Received: 'missing.npz'",
        1,
        id="data-missing",
    ),
]


@pytest.mark.parametrize("args, line, code", BAD)
@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_structural_options(models, fmt, args, line, code):
    fails(models, "prune", models / f"sequential{fmt}", *args, code=code, line=line)


def test_data_that_does_not_fit_the_model(samples):
    fails(
        samples,
        "prune",
        samples / "digits_mlp.h5",
        "--neuron-ratio",
        "0.5",
        "--neuron-criterion",
        "apoz",
        "--data",
        samples / "regression_train.npz",
        code=1,
        pattern=r"Error: data inputs do not fit the model's input \(None, 8, 8, 1\)\. "
        r"Received: x of shape \(\d+, 8\) in '.*regression_train\.npz'",
    )
