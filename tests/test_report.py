"""`prunectl report`: counts read from files, saved reports, baselines, stdin, and no TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import run
from independent import read_weights


@pytest.mark.parametrize("fmt", [".h5", ".keras"])
def test_report_counts_zeros_of_every_weight(models, fmt):
    run("prune", models / f"functional{fmt}", "--sparsity", "0.75", "-q")
    path = models / f"functional.pruned{fmt}"
    report = json.loads(run("report", path, "--json", "--all-weights").stdout)
    weights = {k: v for k, v in read_weights(path).items()}
    assert report["totals"]["all"]["count"] == sum(v.size for v in weights.values())
    assert report["totals"]["all"]["zeros"] == sum(int(np.count_nonzero(v == 0)) for v in weights.values())
    assert len(report["layers"]) == len(weights)
    prunable = [r for r in report["layers"] if r["prunable"]]
    assert {r["layer"] for r in prunable} == {"conv", "fc", "head"}
    for row in prunable:
        assert row["zeros"] == int(np.ceil(0.75 * row["count"] - 1e-9))


def test_report_renders_table_on_stderr_only(models):
    result = run("report", models / "sequential.h5")
    assert result.stdout == ""
    assert "d1" in result.stderr and "kernel" in result.stderr and "all weights" in result.stderr


def test_report_of_saved_report_and_from_stdin(models):
    prune = run("prune", models / "sequential.keras", "--threshold", "0.2", "--json")
    saved = models / "sequential.pruned.keras.report.json"
    from_file = run("report", saved, "--json").stdout
    assert json.loads(from_file)["totals"] == json.loads(prune.stdout)["totals"]
    piped = run("report", "-", "--json", input=prune.stdout).stdout
    assert json.loads(piped)["totals"] == json.loads(prune.stdout)["totals"]
    assert "Threshold" in run("report", saved).stderr


def test_baseline_shows_before_and_after(models):
    run("prune", models / "functional.h5", "--sparsity", "0.5", "-q")
    result = run("report", models / "functional.pruned.h5", "--baseline", models / "functional.h5", "--json")
    rows = {r["layer"]: r for r in json.loads(result.stdout)["baseline"]["layers"]}
    assert rows["conv"]["sparsity_before"] == 0.0
    assert rows["conv"]["sparsity_after"] >= 0.5
    text = run("report", models / "functional.pruned.h5", "--baseline", models / "functional.h5").stderr
    assert "Before" in text and "After" in text


def _no_tensorflow(code: str, cwd) -> None:
    script = (
        "import sys\n" + code + "\nassert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
        "\nassert 'keras' not in sys.modules, 'keras was imported'\nprint('clean')"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", [".h5", ".keras"])
def test_report_and_file_prune_never_import_tensorflow(models, fmt):
    _no_tensorflow(
        "from click.testing import CliRunner\nfrom prunectl.cli.main import cli\n"
        f"r = CliRunner().invoke(cli, ['prune', 'functional{fmt}', '--sparsity', '0.5', '--scope', 'global'])\n"
        "assert r.exit_code == 0, r.output\n"
        f"r = CliRunner().invoke(cli, ['report', 'functional.pruned{fmt}', '--baseline', 'functional{fmt}'])\n"
        "assert r.exit_code == 0, r.output\n",
        models,
    )


@pytest.mark.slow
def test_help_and_version_never_import_tensorflow_or_numpy(tmp_path):
    _no_tensorflow(
        "from click.testing import CliRunner\nfrom prunectl.cli.main import cli\n"
        "assert CliRunner().invoke(cli, ['--help']).exit_code == 0\n"
        "assert CliRunner().invoke(cli, ['--version']).exit_code == 0\n"
        "assert CliRunner().invoke(cli, ['prune', '--help']).exit_code == 0\n"
        "assert 'numpy' not in sys.modules and 'h5py' not in sys.modules\n",
        tmp_path,
    )


@pytest.mark.slow
def test_console_script_version():
    out = subprocess.run([sys.executable, "-m", "prunectl", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("prunectl, version ")
