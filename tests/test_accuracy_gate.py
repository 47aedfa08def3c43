"""The max-accuracy-drop gate: against the accuracy before pruning (prune) or a baseline model (report).

The sample digits MLP loses little accuracy at 50% one-shot sparsity and a lot
at 90%. Accuracies are checked independently: the saved files are loaded in
plain Keras and their predictions compared with the labels.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import invoke

GATE = "max-accuracy-drop"


@pytest.fixture
def digits(samples):
    """The sample MLP and the first 150 test samples as eval.npz."""
    with np.load(samples / "digits_test.npz") as test:
        np.savez(samples / "eval.npz", x=test["x"][:150], y=test["y"][:150])
    return samples


def accuracy(model_path, data_path) -> float:
    import keras

    model = keras.models.load_model(model_path, compile=False)
    with np.load(data_path) as data:
        return float(np.mean(np.argmax(model.predict(data["x"], verbose=0), axis=1) == data["y"]))


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


@pytest.mark.slow
@pytest.mark.parametrize("sparsity,limit,passes", [("0.5", "0.1", True), ("0.9", "0.05", False)])
def test_prune_gate_against_accuracy_before_pruning(digits, sparsity, limit, passes):
    result = invoke(
        "prune",
        digits / "digits_mlp.h5",
        "--sparsity",
        sparsity,
        "--data",
        digits / "eval.npz",
        f"--{GATE}",
        limit,
        "--json",
    )
    report = json.loads(result.stdout)
    evaluation = report["evaluation"]
    before = accuracy(digits / "digits_mlp.h5", digits / "eval.npz")
    after = accuracy(digits / "digits_mlp.pruned.h5", digits / "eval.npz")
    assert evaluation["reference"]["label"] == "before pruning" and evaluation["result"]["label"] == "after pruning"
    assert evaluation["reference"]["values"]["accuracy"] == pytest.approx(before, abs=1e-6)
    assert evaluation["result"]["values"]["accuracy"] == pytest.approx(after, abs=1e-6)
    [verdict] = report["gates"]
    assert verdict["name"] == GATE and verdict["passed"] is passes
    assert verdict["value"] == pytest.approx(before - after, abs=1e-6)
    if passes:
        assert result.exit_code == 0, result.output
        assert error_lines(result) == []
    else:
        assert result.exit_code == 3
        assert error_lines(result) == [f"Error: gate {GATE} failed: measured {before - after:.4f}, limit <= 0.0500"]
    assert json.loads((digits / "digits_mlp.pruned.h5.report.json").read_text())["gates"] == report["gates"]


@pytest.mark.slow
def test_report_gate_against_a_baseline(digits):
    invoke("prune", digits / "digits_mlp.h5", "--sparsity", "0.9", "-q")
    pruned, data = digits / "digits_mlp.pruned.h5", digits / "eval.npz"
    drop = accuracy(digits / "digits_mlp.h5", data) - accuracy(pruned, data)
    ok = invoke("report", pruned, "--baseline", digits / "digits_mlp.h5", "--data", data, f"--{GATE}", "0.9")
    assert ok.exit_code == 0, ok.output
    assert f"Gate {GATE} passed: measured {drop:.4f}, limit <= 0.9000" in ok.stderr
    assert "Evaluation on" in ok.stderr and "accuracy" in ok.stderr
    bad = invoke(
        "report", pruned, "--baseline", digits / "digits_mlp.h5", "--data", data, f"--{GATE}", "0.05", "--json"
    )
    assert bad.exit_code == 3
    report = json.loads(bad.stdout)
    assert report["evaluation"]["reference"]["label"] == f"baseline {digits / 'digits_mlp.h5'}"
    assert error_lines(bad) == [f"Error: gate {GATE} failed: measured {drop:.4f}, limit <= 0.0500"]


def test_finetuning_gate_reads_the_validation_evaluation(digits):
    result = invoke(
        "prune",
        digits / "digits_mlp.h5",
        "--sparsity",
        "0.5",
        "--finetune-epochs",
        "0",
        "--data",
        digits / "eval.npz",
        "--val-data",
        digits / "eval.npz",
        f"--{GATE}",
        "0.2",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    tuned = report["finetune"]["evaluation"]
    assert report["evaluation"]["reference"]["values"] == tuned["before_pruning"]
    assert report["evaluation"]["result"] == {"label": "after pruning", "values": tuned["after_pruning"]}
    [verdict] = report["gates"]
    assert verdict["value"] == pytest.approx(tuned["before_pruning"]["accuracy"] - tuned["after_pruning"]["accuracy"])


def test_a_model_without_accuracy_fails_the_gate_as_not_measured(samples):
    model, data = samples / "regressor.h5", samples / "regression_test.npz"
    result = invoke("report", model, "--baseline", model, "--data", data, f"--{GATE}", "0.1")
    assert result.exit_code == 3
    assert error_lines(result) == [
        f"Error: gate {GATE}: not measured (the evaluation measured loss and no accuracy; gate a model without "
        "accuracy (a regressor) with --max-loss-increase D or --max-metric-drop NAME=D)"
    ]


@pytest.mark.parametrize(
    "args,line",
    [
        (
            ("prune", "{model}", "--sparsity", "0.5", f"--{GATE}", "0.1"),
            f"Error: --{GATE} is measured on evaluation data; add --data EVAL. Received: --{GATE} 0.1 without --data",
        ),
        (
            ("prune", "{model}", "--sparsity", "0.5", "--data", "{data}", f"--{GATE}", "1.5"),
            f"Error: --{GATE} must be a finite number in [0, 1]. Received: --{GATE}=1.5",
        ),
        (
            ("prune", "{model}", "--sparsity", "0.5", "--finetune-epochs", "1", "--data", "{data}", f"--{GATE}", "0.1"),
            f"Error: with --finetune-epochs, --{GATE} is measured on the validation data; "
            "add --val-data or --val-split. "
            f"Received: --{GATE} 0.1 without either",
        ),
        (
            ("prune", "{model}", "--sparsity", "0.5", "--data", "{data}"),
            "Error: --data is read by --finetune-epochs, an activation criterion, a data-aware --weight-criterion, "
            "--benchmark, --fold-batchnorm or --max-accuracy-drop. "
            "Received: --data {data} without any of them",
        ),
        (
            ("report", "{model}", f"--{GATE}", "0.1"),
            f"Error: --{GATE} is measured on evaluation data; add --data EVAL. Received: --{GATE} 0.1 without --data",
        ),
        (
            ("report", "{model}", "--data", "{data}", f"--{GATE}", "0.1"),
            f"Error: --{GATE} compares the model with a baseline; add --baseline MODEL. Received: --{GATE} 0.1 without "
            "--baseline",
        ),
        (
            ("report", "{model}", "--baseline", "{model}", "--data", "{data}", f"--{GATE}", "-0.1"),
            f"Error: --{GATE} must be a finite number in [0, 1]. Received: --{GATE}=-0.1",
        ),
        (
            ("report", "-", "--data", "{data}"),
            "Error: --data evaluates a model, not a JSON report. Received: --data {data} with -",
        ),
    ],
)
def test_usage_errors(digits, args, line):
    paths = {"model": digits / "digits_mlp.h5", "data": digits / "eval.npz"}
    result = invoke(*(a.format(**paths) for a in args))
    assert result.exit_code == 2
    assert result.stdout == "" and result.stderr.splitlines() == [line.format(**paths)]
    assert not (digits / "digits_mlp.pruned.h5").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs a shell")
def test_shell_pipelines_pass_and_fail(digits):
    """`prune --json | report - --max-accuracy-drop D` and `report --baseline --json | report -`, in a real shell."""
    cmd = f"{sys.executable} -m prunectl"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    def shell(line: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-o", "pipefail", "-c", line], capture_output=True, text=True, env=env, cwd=digits
        )

    model, data = "digits_mlp.h5", "eval.npz"
    pruned = shell(
        f"{cmd} prune {model} --sparsity 0.9 --data {data} --{GATE} 1 --json -q "
        f"| tee pruned.json | {cmd} report - --{GATE} 0.9"
    )
    assert pruned.returncode == 0, pruned.stderr
    strict = shell(f"cat pruned.json | {cmd} report - --{GATE} 0.05 --json > gated.json")
    assert strict.returncode == 3
    assert strict.stderr.strip().splitlines()[-1].startswith(f"Error: gate {GATE} failed: measured 0.")
    assert json.loads((digits / "gated.json").read_text())["gates"][0]["passed"] is False
    baseline = shell(
        f"{cmd} report digits_mlp.pruned.h5 --baseline {model} --data {data} --{GATE} 1 --json "
        f"| tee baseline.json | {cmd} report - --{GATE} 0.9"
    )
    assert baseline.returncode == 0, baseline.stderr
    failed = shell(f"cat baseline.json | {cmd} report - --{GATE} 0.05")
    assert failed.returncode == 3
    assert failed.stderr.strip().splitlines()[-1].startswith(f"Error: gate {GATE} failed: measured 0.")
