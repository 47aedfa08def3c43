"""The budget's combined check and back-off, and structural (units) sensitivity.

The back-off rule is checked on the pure function with known drops; the combined
check on the shipped digits CNN is verified by pruning the final choice by hand
with numpy and evaluating with plain Keras.
"""

from __future__ import annotations

import json
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import numpy as np
import pytest
from conftest import invoke

from prunectl.core.errors import OptionError
from prunectl.core.run.backoff import Option, back_off

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def test_back_off_takes_the_largest_drop_per_removed_first():
    options = {
        "big": [Option(0.5, 0.004, 1000), Option(0.9, 0.008, 1800)],
        "small": [Option(0.5, 0.002, 10), Option(0.9, 0.006, 18)],
        "mid": [Option(0.5, 0.0, 100)],
    }
    measured = []

    def combined(choice):
        measured.append(choice)
        return {3: 0.05, 2: 0.03}.get(len(choice), 0.0) + (0.02 if choice.get("big") == 0.9 else 0.0)

    found = back_off({"big": 0.9, "small": 0.9, "mid": 0.5}, options, combined, 0.01)
    # small has the largest drop per removed (0.006/18, then 0.002/10), then big (0.008/1800, 0.004/1000);
    # mid's drop of 0 makes it the least fragile
    assert [c.get("backed_off", {}).get("key") for c in found.checks] == ["small", "small", "big", "big", None]
    assert [c["backed_off"]["to"] for c in found.checks[:4]] == [0.5, None, 0.5, None]
    assert [c["drop"] for c in found.checks] == pytest.approx([0.07, 0.07, 0.05, 0.03, 0.0])
    assert found.choice == {"mid": 0.5} and found.fits and found.drop == 0.0
    assert measured == [c["choice"] for c in found.checks]


def test_back_off_skips_lower_settings_over_budget_and_ends_empty():
    options = {"a": [Option(0.3, 0.5, 3), Option(0.6, 0.0, 6), Option(0.9, 0.001, 9)]}
    found = back_off({"a": 0.9}, options, lambda choice: 1.0, 0.01)
    # 0.9 -> 0.6 (0.3 alone is over budget, so it is skipped) -> dense
    assert [(c["backed_off"]["from"], c["backed_off"]["to"]) for c in found.checks] == [(0.9, 0.6), (0.6, None)]
    assert found.choice == {} and not found.fits and found.drop == 0.0


def test_back_off_refuses_a_setting_not_tested():
    with pytest.raises(OptionError, match="Received: 'a'=0.7"):
        back_off({"a": 0.7}, {"a": [Option(0.5, 0.0, 1)]}, lambda c: 0.0, 0.01)


def _prune_by_hand(model, choice: dict[str, float]) -> None:
    """Zero each chosen layer's smallest |w| by magnitude, ceil(s * n) per kernel, with numpy."""
    for name, sparsity in choice.items():
        layer = model.get_layer(name)
        kernel = layer.kernel.numpy()
        count = int(np.ceil(round(sparsity * kernel.size, 9)))
        order = np.argsort(np.abs(kernel).ravel(), kind="stable")[:count]
        flat = kernel.ravel().copy()
        flat[order] = 0
        layer.kernel.assign(flat.reshape(kernel.shape))


@pytest.mark.slow
def test_digits_combined_drop_within_budget_checked_by_hand(tmp_path):
    import keras

    out = tmp_path / "r.toml"
    result = invoke(
        "sensitivity",
        SAMPLES / "digits_cnn.keras",
        "--data",
        SAMPLES / "digits_test.npz",
        "--budget",
        "0.01",
        "--recipe-out",
        out,
        "--json",
    )
    assert result.exit_code == 0, result.output
    budget = json.loads(result.stdout)["budget"]
    assert budget["checks"][0]["choice"] == budget["per_layer"]
    assert budget["checks"][0]["drop"] > 0.01  # the picks alone do not add up: the back-off had work
    assert budget["fits"] and budget["layers"] and budget["combined_drop"] <= 0.01
    data = np.load(SAMPLES / "digits_test.npz")
    model = keras.saving.load_model(SAMPLES / "digits_cnn.keras")
    dense = float(np.mean(np.argmax(model.predict(data["x"], verbose=0), 1) == data["y"]))
    _prune_by_hand(model, budget["layers"])
    pruned = float(np.mean(np.argmax(model.predict(data["x"], verbose=0), 1) == data["y"]))
    assert dense - pruned == pytest.approx(budget["combined_drop"], abs=1e-6)
    assert dense - pruned <= 0.01
    text = out.read_text()
    assert "drops of several layers can add up" not in text
    assert f"they lose {budget['combined_drop']:.4f} accuracy (measured" in text
    recipe = tomllib.loads(text)
    assert recipe["step"][0]["layers"] == {f"^{k}$": {"sparsity": v} for k, v in budget["layers"].items()}


@pytest.mark.slow
def test_digits_no_combination_fits(monkeypatch, tmp_path):
    from prunectl.core.run import sensitivity as module

    real = module.back_off
    # Every combined check loses more than any budget: the back-off must empty the choice.
    monkeypatch.setattr(
        module, "back_off", lambda choice, options, drop, budget: real(choice, options, lambda c: 1.0, budget)
    )
    result = invoke(
        "sensitivity", SAMPLES / "digits_cnn.keras", "--data", SAMPLES / "digits_test.npz", "--budget", "0.01"
    )
    assert result.exit_code == 0, result.output
    shown = " ".join(result.stderr.split())
    assert "Budget 0.01 accuracy: no combination fits." in shown
    assert "everything is left dense." in shown


def test_weights_restored_after_the_combined_checks(tmp_path):
    import keras

    from prunectl.core.io import keras_io
    from prunectl.core.io.modelfile import open_model_file
    from prunectl.core.run.sensitivity import SensitivityOptions, analyze
    from prunectl.core.training.evaluate import EvalOptions

    rng = np.random.default_rng(0)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, name="a"), keras.layers.Dense(3, activation="softmax", name="b")]
    )
    x = rng.standard_normal((64, 6)).astype("float32")
    np.savez(tmp_path / "val.npz", x=x, y=np.argmax(model.predict(x, verbose=0), 1))
    model.save(tmp_path / "m.keras")
    with open_model_file(tmp_path / "m.keras") as source:
        loaded = keras_io.load_model(source)
    before = [w.copy() for w in loaded.model.get_weights()]
    report = analyze(loaded, SensitivityOptions(EvalOptions(tmp_path / "val.npz"), sparsities=(0.5, 0.9), budget=1.0))
    assert report.budget["checks"]  # at least one combined check ran
    for old, new in zip(before, loaded.model.get_weights()):
        np.testing.assert_array_equal(old, new)


@pytest.fixture(scope="module")
def conv(tmp_path_factory):
    """A tiny conv model whose conv ``c1`` has channels 0..3 exactly dead (kernel and bias zero, no BN)."""
    import keras

    folder = tmp_path_factory.mktemp("units")
    rng = np.random.default_rng(1)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(8, 3, activation="relu", name="c1"),
            keras.layers.Conv2D(4, 3, activation="relu", name="c2"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )
    kernel, bias = model.get_layer("c1").get_weights()
    kernel[..., :4] = 0
    bias[:4] = 0
    bias[4:] = np.abs(bias[4:]) + 1.0  # the live channels score far above the dead ones under l1
    kernel[..., 4:] = rng.standard_normal(kernel[..., 4:].shape)
    model.get_layer("c1").set_weights([kernel, bias])
    x = rng.standard_normal((64, 6, 6, 2)).astype("float32")
    np.savez(folder / "val.npz", x=x, y=np.argmax(model.predict(x, verbose=0), 1))
    model.save(folder / "conv.keras")
    return folder


def test_units_rows_per_group_and_dead_channels_cost_nothing(conv):
    result = invoke(
        "sensitivity", conv / "conv.keras", "--data", conv / "val.npz", "--neuron-ratios", "0.5,0.25", "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["mode"] == "structural" and report["ratios"] == [0.25, 0.5]
    rows = {tuple(r["layers"]): r for r in report["groups"]}
    assert set(rows) == {("c1",), ("c2",)}
    c1 = rows[("c1",)]
    assert c1["units"] == 8 and [t["units_after"] for t in c1["trials"]] == [6, 4]
    # l1 removes the dead channels first: exactly nothing changes
    assert [t["drop"] for t in c1["trials"]] == [0.0, 0.0]
    assert c1["trials"][1]["params_after"] == report["dense_cost"]["params"] - 4 * (3 * 3 * 2 + 1) - 4 * 3 * 3 * 4


def test_units_round_to_floor_is_recorded_not_evaluated(conv, monkeypatch):
    from prunectl.core.training.evaluate import Evaluator

    calls = []
    real = Evaluator.__call__
    monkeypatch.setattr(Evaluator, "__call__", lambda self, model: calls.append(model) or real(self, model))
    result = invoke(
        "sensitivity",
        conv / "conv.keras",
        "--data",
        conv / "val.npz",
        "--neuron-ratios",
        "0.25",
        "--round-to",
        "4",
        "--include",
        "^c2$",
        "--json",
    )
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)["groups"]
    # c2 has 4 units: 25% removes one, rounding up to 4 keeps them all
    assert row["trials"][0]["units_after"] == 4 and row["trials"][0]["evaluated"] is False
    assert len(calls) == 1  # the dense model only


def test_units_recipe_round_trip(conv, tmp_path):
    from prunectl.core.io import keras_io
    from prunectl.core.io.modelfile import open_model_file
    from prunectl.core.structure.plan import NeuronPruning, plan_structure

    out = tmp_path / "units.toml"
    result = invoke(
        "sensitivity",
        conv / "conv.keras",
        "--data",
        conv / "val.npz",
        "--neuron-ratios",
        "0.5",
        "--budget",
        "0.0",
        "--recipe-out",
        out,
        "--json",
    )
    assert result.exit_code == 0, result.output
    budget = json.loads(result.stdout)["budget"]
    assert budget["groups"].get("^c1$") == 0.5 and budget["combined_drop"] <= 0.0
    [step] = tomllib.loads(out.read_text())["step"]
    assert step["neuron-ratio"] == 0.0 and step["layers"]["^c1$"] == {"neuron-ratio": 0.5}
    neurons = NeuronPruning.from_config({k.replace("-", "_"): v for k, v in step.items()})
    with open_model_file(conv / "conv.keras") as source:
        model = keras_io.load_model(source).model
    plan = plan_structure(model, neurons)
    by_producer = {g.producers[0]: g for g in plan.groups}
    assert by_producer["c1"].dropped == (0, 1, 2, 3)
    assert plan.totals()["params"]["after"] == budget["params_after"]


@pytest.mark.slow
def test_units_on_digits(tmp_path):
    result = invoke(
        "sensitivity",
        SAMPLES / "digits_cnn.keras",
        "--data",
        SAMPLES / "digits_test.npz",
        "--neuron-ratios",
        "0.25,0.5",
        "--budget",
        "0.01",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["layers"] for r in report["groups"]] == [["conv1"], ["conv2"], ["fc1"]]
    assert report["budget"]["combined_drop"] <= 0.01


@pytest.mark.parametrize(
    "args,line",
    [
        (
            ("--neuron-ratios", "0.5,1"),
            "Error: Invalid value for '--neuron-ratios': --neuron-ratios must be a finite number in (0, 1). "
            "Received: --neuron-ratios=1.0",
        ),
        (
            ("--neuron-ratios", "0.5", "--sparsities", "0.5"),
            "Error: --sparsities tests weights and --neuron-ratios tests units; give one. "
            "Received: --sparsities 0.5 with --neuron-ratios 0.5",
        ),
        (
            ("--round-to", "4"),
            "Error: --round-to set units trials; add --neuron-ratios R1,R2. Received: --round-to without it",
        ),
    ],
)
def test_units_errors_are_one_line(conv, args, line):
    result = invoke("sensitivity", conv / "conv.keras", "--data", conv / "val.npz", *args)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [line]
