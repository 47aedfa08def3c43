"""Gates for models without accuracy: --max-loss-increase and --max-metric-drop, on the sample regressor.

The measured values are checked independently: the input and the saved output
are loaded in plain Keras, and their mean squared error (the regressor's saved
loss) and mean absolute error are computed with numpy from their predictions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import invoke

from prunectl.core.errors import OptionError
from prunectl.core.run.gates import GATES, gate_config, gate_pairs, parse_amount
from prunectl.core.run.markdown import report_markdown
from prunectl.core.training.evaluation import Evaluation, metric_better


def errors(model_path, data_path) -> dict[str, float]:
    """Mean squared and mean absolute error of a saved model on a data file, computed here."""
    import keras

    model = keras.models.load_model(model_path, compile=False)
    with np.load(data_path) as data:
        residual = model.predict(data["x"], verbose=0).reshape(-1) - data["y"].reshape(-1)
    return {"mse": float(np.mean(residual**2)), "mae": float(np.mean(np.abs(residual)))}


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


# --- the gates on a report, without a model ---------------------------------------------------------


class Facts:
    """The one attribute these gates read from a report."""

    def __init__(self, before: dict | None, after: dict):
        self.evaluation = Evaluation({}, ("after", after), None if before is None else ("before", before))


@pytest.mark.parametrize(
    "text,expected",
    [("0.05", (0.05, False)), ("5%", (0.05, True)), (" 12.5% ", (0.125, True)), ("0", (0.0, False))],
)
def test_limits_are_absolute_or_percentages(text, expected):
    value, relative = parse_amount(text, "max-loss-increase")
    assert value == pytest.approx(expected[0]) and relative is expected[1]


@pytest.mark.parametrize("text", ["-1", "abc", "5%%", "nan", "inf", ""])
def test_bad_limits_are_refused(text):
    with pytest.raises(OptionError, match=r"must be a number >= 0, or a percentage such as 5%\. Received: "):
        parse_amount(text, "max-loss-increase")


@pytest.mark.parametrize(
    "name,better",
    [
        ("mae", "lower"),
        ("mean_squared_error", "lower"),
        ("rmse", "lower"),
        ("loss", "lower"),
        ("sparse_categorical_crossentropy", "lower"),
        ("accuracy", "higher"),
        ("sparse_categorical_accuracy", "higher"),
        ("r2_score", "higher"),
        ("auc", "higher"),
        ("my_score", None),
    ],
)
def test_metric_directions(name, better):
    assert metric_better(name) == better


def test_worsening_follows_the_metric_direction():
    before, after = {"loss": 0.5, "mae": 0.2, "r2_score": 0.9}, {"loss": 0.6, "mae": 0.25, "r2_score": 0.8}
    facts = Facts(before, after)
    loss = GATES.get("max-loss-increase")("0.1").check(facts)
    assert loss.value == pytest.approx(0.1) and loss.passed and loss.to_dict()["relative"] is False
    relative = GATES.get("max-loss-increase")("10%").check(facts)
    assert relative.value == pytest.approx(0.2) and not relative.passed
    assert relative.message == (
        "max-loss-increase failed: measured +20.00%, limit <= 10% (relative; loss 0.5 -> 0.6, lower is better)"
    )
    mae = GATES.get("max-metric-drop")("mean_absolute_error=0.1").check(facts)  # the alias finds "mae"
    assert mae.value == pytest.approx(0.05) and mae.passed
    r2 = GATES.get("max-metric-drop")("r2_score=0.05").check(facts)
    assert r2.value == pytest.approx(0.1) and not r2.passed  # higher is better: 0.9 -> 0.8 is a drop of 0.1
    assert r2.to_dict()["better"] == "higher" and r2.to_dict()["reference"] == 0.9


def test_an_improvement_is_a_negative_worsening():
    gate = GATES.get("max-metric-drop")("mae=0").check(Facts({"mae": 0.3}, {"mae": 0.2}))
    assert gate.value == pytest.approx(-0.1) and gate.passed


def test_unmeasured_or_undirected_metrics_fail_naming_what_was_measured():
    facts = Facts({"loss": 1.0, "my_score": 2.0}, {"loss": 1.0, "my_score": 1.0})
    missing = GATES.get("max-metric-drop")("mae=0.1").check(facts)
    assert not missing.passed and missing.value is None
    assert missing.message.startswith(
        "max-metric-drop mae: not measured (no mae was measured before and after (measured: loss, my_score)"
    )
    unknown = GATES.get("max-metric-drop")("my_score=0.1").check(facts)
    assert unknown.message == (
        "max-metric-drop my_score: not measured (cannot tell whether a higher or a lower my_score is better; "
        "measured: loss, my_score)"
    )
    accuracy = GATES.get("max-accuracy-drop")(0.1).check(facts)
    assert accuracy.message == (
        "max-accuracy-drop: not measured (the evaluation measured loss, my_score and no accuracy; gate a model "
        "without accuracy (a regressor) with --max-loss-increase D or --max-metric-drop NAME=D)"
    )


def test_relative_change_from_zero_is_not_measured():
    gate = GATES.get("max-loss-increase")("5%").check(Facts({"loss": 0.0}, {"loss": 0.1}))
    assert gate.value is None and "relative change is undefined" in gate.message
    assert GATES.get("max-loss-increase")("0.2").check(Facts({"loss": 0.0}, {"loss": 0.1})).passed


@pytest.mark.parametrize("text", ["mae", "=0.1", "mae=x", "mae=-1"])
def test_bad_metric_limits_are_refused(text):
    with pytest.raises(OptionError, match=r"Received: max_metric_drop="):
        GATES.get("max-metric-drop")(text)


def test_repeated_metric_gates_are_pairs_of_their_own():
    pairs = gate_pairs({"max_metric_drop": ("mae=0.1", "rmse=5%"), "max_params": 10, "max_size": None})
    assert pairs == (("max-metric-drop", "mae=0.1"), ("max-metric-drop", "rmse=5%"), ("max-params", 10))
    assert gate_config(pairs) == {"max-metric-drop": ["mae=0.1", "rmse=5%"], "max-params": 10}
    assert gate_pairs({"max_metric_drop": ()}) == ()


def test_markdown_shows_the_metric_and_percentages():
    gate = GATES.get("max-metric-drop")("mae=10%").check(Facts({"mae": 0.2}, {"mae": 0.21}))
    report = {"kind": "model", "model": {"path": "m.h5"}, "totals": {}, "layers": [], "gates": [gate.to_dict()]}
    report["totals"] = {k: {"count": 1, "zeros": 0, "sparsity": 0.0} for k in ("prunable", "all")}
    assert "| max-metric-drop mae | +5.00% | 10% | ✅ passed |" in report_markdown(report)
    loss = GATES.get("max-loss-increase")("0.5").check(Facts({"loss": 0.2}, {"loss": 0.3}))
    report["gates"] = [loss.to_dict()]
    assert "| max-loss-increase | 0.1 | 0.5 | ✅ passed |" in report_markdown(report)


# --- the sample regressor, end to end ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_prune_gates_a_regressor_against_itself_before_pruning(samples, suffix):
    model, data = samples / f"regressor{suffix}", samples / "regression_test.npz"
    result = invoke(
        "prune",
        model,
        "--sparsity",
        "0.5",
        "--data",
        data,
        "--max-loss-increase",
        "100%",
        "--max-metric-drop",
        "mae=1",
        "--max-metric-drop",
        "mae=0.01",
        "--json",
    )
    report = json.loads(result.stdout)
    before, after = errors(model, data), errors(samples / f"regressor.pruned{suffix}", data)
    loss, loose, strict = report["gates"]
    # The saved loss is mse; the evaluation measured the gate's mae too.
    assert report["evaluation"]["loss"] == "mse"
    assert loss["reference"] == pytest.approx(before["mse"], rel=1e-4)
    assert loss["result"] == pytest.approx(after["mse"], rel=1e-4)
    assert loss["relative"] is True and loss["limit"] == 1.0
    assert loss["value"] == pytest.approx((after["mse"] - before["mse"]) / before["mse"], rel=1e-3)
    assert loss["passed"] is (loss["value"] <= 1.0)
    assert loose["metric"] == strict["metric"] == "mae" and loose["better"] == "lower"
    assert loose["value"] == pytest.approx(after["mae"] - before["mae"], abs=1e-5)
    assert loose["passed"] and not strict["passed"]
    assert result.exit_code == 3
    expected = {g["message"] for g in report["gates"] if not g["passed"]}
    assert {line.removeprefix("Error: gate ") for line in error_lines(result)} == expected
    assert report["options"]["gates"] == {"max-loss-increase": "100%", "max-metric-drop": ["mae=1", "mae=0.01"]}
    saved = json.loads(Path(report["report_path"]).read_text())
    assert saved["gates"] == report["gates"]


def test_report_gates_a_regressor_against_a_baseline(samples):
    model, data = samples / "regressor.h5", samples / "regression_test.npz"
    assert invoke("prune", model, "--sparsity", "0.3", "-q").exit_code == 0
    pruned = samples / "regressor.pruned.h5"
    before, after = errors(model, data), errors(pruned, data)
    increase = after["mse"] - before["mse"]
    ok = invoke("report", pruned, "--baseline", model, "--data", data, "--max-loss-increase", "10")
    assert ok.exit_code == 0, ok.output
    assert f"Gate max-loss-increase passed: measured {increase:+.4f}, limit <= 10.0000 (absolute; " in ok.stderr
    bad = invoke("report", pruned, "--baseline", model, "--data", data, "--max-accuracy-drop", "0.1")
    assert bad.exit_code == 3
    assert error_lines(bad) == [
        "Error: gate max-accuracy-drop: not measured (the evaluation measured loss and no accuracy; gate a model "
        "without accuracy (a regressor) with --max-loss-increase D or --max-metric-drop NAME=D)"
    ]


@pytest.mark.parametrize(
    "args,line",
    [
        (
            ("--max-loss-increase", "five"),
            "Error: --max-loss-increase must be a number >= 0, or a percentage such as 5%. "
            "Received: --max-loss-increase=five",
        ),
        (
            ("--max-metric-drop", "mae"),
            "Error: --max-metric-drop must be NAME=D or NAME=D% (a metric and its largest worsening). "
            "Received: --max-metric-drop=mae",
        ),
    ],
)
def test_bad_limits_are_usage_errors(samples, args, line):
    result = invoke(
        "prune", samples / "regressor.h5", "--sparsity", "0.5", "--data", samples / "regression_test.npz", *args
    )
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [line]
    assert not (samples / "regressor.pruned.h5").exists()


def test_metric_gate_needs_data(samples):
    result = invoke("prune", samples / "regressor.h5", "--sparsity", "0.5", "--max-metric-drop", "mae=0.1")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "Error: --max-metric-drop is measured on evaluation data; add --data EVAL. "
        "Received: --max-metric-drop mae=0.1 without --data"
    ]


def test_with_finetuning_the_gates_read_the_validation_evaluation(samples):
    model, data = samples / "regressor.keras", samples / "regression_test.npz"
    result = invoke(
        "prune",
        model,
        "--sparsity",
        "0.5",
        "--finetune-epochs",
        "0",
        "--data",
        data,
        "--val-data",
        data,
        "--metrics",
        "mae",
        "--max-metric-drop",
        "mae=10",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    [gate] = report["gates"]
    before, after = errors(model, data), errors(samples / "regressor.pruned.keras", data)
    assert gate["passed"] and gate["value"] == pytest.approx(after["mae"] - before["mae"], abs=1e-5)
    assert report["evaluation"]["result"]["label"] == "after pruning"
