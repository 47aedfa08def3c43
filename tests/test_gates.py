"""Quality gates, Markdown summaries and environment options, through CliRunner and a real shell pipeline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import invoke

from prunectl.cli.main import cli
from prunectl.core.run.gates import GATES


def test_every_gate_is_an_option_of_both_commands():
    for command in ("prune", "report"):
        options = {p.name for p in cli.commands[command].params}
        assert {name.replace("-", "_") for name in GATES.names()} <= options


@pytest.mark.parametrize(
    "gate,limit,passes",
    [
        ("--min-sparsity", "0.5", True),
        ("--min-sparsity", "0.51", False),
        ("--max-params", "100000", True),
        ("--max-params", "10", False),
    ],
)
def test_prune_gates_pass_or_exit_3(models, gate, limit, passes):
    result = invoke("prune", models / "functional.h5", "--sparsity", "0.5", gate, limit, "--json")
    report = json.loads(result.stdout)
    [verdict] = report["gates"]
    assert verdict["name"] == gate[2:] and verdict["passed"] is passes
    assert verdict["limit"] == float(limit)
    if passes:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 3
        name = gate[2:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and errors[0].startswith(f"Error: gate {name} failed: measured ")
    # outputs are written either way, and the saved report holds the verdicts
    saved = json.loads((models / "functional.pruned.h5.report.json").read_text())
    assert saved["gates"] == report["gates"]


def test_max_size_measures_the_output_file(models):
    result = invoke("prune", models / "sequential.keras", "--threshold", "0.1", "--max-size", "10", "--json")
    assert result.exit_code == 3
    [verdict] = json.loads(result.stdout)["gates"]
    assert verdict["value"] == (models / "sequential.pruned.keras").stat().st_size


def test_report_gates_on_a_model(models):
    ok = invoke("report", models / "sequential.h5", "--max-params", "100000")
    assert ok.exit_code == 0 and "Gate max-params passed" in ok.stderr
    bad = invoke("report", models / "sequential.h5", "--min-sparsity", "0.1")
    assert bad.exit_code == 3
    assert bad.stderr.strip().splitlines()[-1] == "Error: gate min-sparsity failed: measured 0.0000, limit >= 0.1000"


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ("--min-sparsity", "1.5"),
            "Error: --min-sparsity must be a finite number in [0, 1]. Received: --min-sparsity=1.5",
        ),
        (("--max-params", "-3"), "Error: --max-params must be a finite number >= 0. Received: --max-params=-3"),
    ],
)
def test_bad_gate_limits_are_usage_errors(models, args, message):
    result = invoke("prune", models / "sequential.h5", "--threshold", "0.1", *args)
    assert result.exit_code == 2
    assert result.stderr.strip() == message
    assert not (models / "sequential.pruned.h5").exists()


def test_markdown_file_and_stdout(models):
    target = models / "summary.md"
    result = invoke(
        "prune", models / "functional.keras", "--sparsity", "0.6", "--markdown", target, "--min-sparsity", "0.5"
    )
    assert result.exit_code == 0, result.output
    text = target.read_text()
    assert text.startswith("## prunectl: ")
    assert "| conv | Conv2D | kernel |" in text and "| min-sparsity |" in text and "passed" in text
    piped = invoke("report", models / "functional.pruned.keras", "--markdown", "-")
    assert piped.exit_code == 0 and piped.stdout.startswith("## prunectl report: ")
    both = invoke("report", models / "functional.pruned.keras", "--markdown", "-", "--json")
    assert both.exit_code == 2 and both.stderr.startswith("Error: --json and --markdown - both write to stdout")


def test_options_from_environment(models):
    env = {"PRUNECTL_PRUNE_SPARSITY": "0.7", "PRUNECTL_PRUNE_SCOPE": "global"}
    result = invoke("prune", models / "functional.h5", "--json", env=env)
    assert result.exit_code == 0, result.output
    options = json.loads(result.stdout)["options"]
    assert options["sparsity"] == 0.7 and options["scope"] == "global"
    gate = invoke("report", models / "functional.pruned.h5", env={"PRUNECTL_REPORT_MIN_SPARSITY": "0.9"})
    assert gate.exit_code == 3


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs a shell")
def test_shell_pipeline_prune_json_into_report_gate(models):
    """`prunectl prune ... --json | prunectl report - --min-sparsity X`, in a real shell."""
    exe = [sys.executable, "-m", "prunectl"]
    cmd = " ".join(exe)
    src = models / "functional.h5"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    ok = subprocess.run(
        [
            "bash",
            "-o",
            "pipefail",
            "-c",
            f"{cmd} prune {src} --sparsity 0.8 --json -q | {cmd} report - --min-sparsity 0.8",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [
            "bash",
            "-o",
            "pipefail",
            "-c",
            f"{cmd} prune {src} --sparsity 0.5 --json -q --force | {cmd} report - --min-sparsity 0.8",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 3
    assert bad.stderr.strip().splitlines()[-1].startswith("Error: gate min-sparsity failed: measured 0.5")
