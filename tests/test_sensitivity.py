"""`prunectl sensitivity` on a tiny classifier whose fragile layer is known by construction.

``robust`` is an identity map plus 240 tiny weights (|w| <= 1e-3): magnitude
pruning removes only the tiny ones up to 240/256 = 93.75% sparsity, so its drop
is exactly 0 there. ``fragile`` holds 64 Gaussian weights that all decide the
class; the labels are the dense model's own predictions (with a clear margin),
so the dense accuracy is 1.0 and every pruned weight of ``fragile`` costs.
"""

from __future__ import annotations

import json

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import numpy as np
import pytest
from conftest import invoke
from independent import kernel

from prunectl.core.errors import OptionError
from prunectl.core.io import keras_io
from prunectl.core.io.modelfile import open_model_file
from prunectl.core.options import parse_sparsities
from prunectl.core.run.recipe import toml_text as dumps
from prunectl.core.run.sensitivity import SensitivityOptions, analyze, run_sensitivity
from prunectl.core.training.evaluate import EvalOptions, Evaluator

LAYERS = ("robust", "fragile")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import keras

    folder = tmp_path_factory.mktemp("sensitivity")
    rng = np.random.default_rng(3)
    model = keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(16, use_bias=False, name="robust"),
            keras.layers.Dense(4, use_bias=False, activation="softmax", name="fragile"),
        ]
    )
    noise = rng.uniform(-1e-3, 1e-3, (16, 16)) * (1 - np.eye(16))
    model.get_layer("robust").kernel.assign(np.eye(16) + noise)
    model.get_layer("fragile").kernel.assign(rng.standard_normal((16, 4)))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = rng.standard_normal((600, 16)).astype("float32")
    logits = x @ model.get_layer("fragile").kernel.numpy()
    top2 = np.sort(logits, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.5  # no label flips from the 1e-3 weights
    np.savez(folder / "val.npz", x=x[clear][:128], y=np.argmax(logits[clear][:128], axis=1))
    model.save(folder / "tiny.h5")
    model.save(folder / "tiny.keras")
    return folder


def drops(result) -> dict[str, list[float]]:
    return {row["layer"]: [t["drop"] for t in row["trials"]] for row in result["layers"]}


def load(path):
    with open_model_file(path) as source:
        return keras_io.load_model(source)


@pytest.mark.parametrize("fmt", [".h5", ".keras"])
def test_fragile_layer_shows_the_largest_drop(tiny, fmt):
    options = SensitivityOptions(EvalOptions(tiny / "val.npz"), sparsities=(0.5, 0.7, 0.9))
    result = run_sensitivity(tiny / f"tiny{fmt}", options).to_dict()
    assert result["metric"] == {"name": "accuracy", "higher_is_better": True, "dense": 1.0}
    found = drops(result)
    assert [row["layer"] for row in result["layers"]] == list(LAYERS)
    assert found["robust"] == [0.0, 0.0, 0.0]
    assert all(d > 0.05 for d in found["fragile"])
    assert found["fragile"] == sorted(found["fragile"])


@pytest.mark.slow
def test_weights_restored_and_model_loaded_once(tiny, monkeypatch):
    loads = []
    original = keras_io.load_model
    monkeypatch.setattr(keras_io, "load_model", lambda *a, **k: loads.append(a) or original(*a, **k))
    run_sensitivity(tiny / "tiny.h5", SensitivityOptions(EvalOptions(tiny / "val.npz"), sparsities=(0.5, 0.9)))
    assert len(loads) == 1
    loaded = load(tiny / "tiny.keras")
    analyze(loaded, SensitivityOptions(EvalOptions(tiny / "val.npz"), sparsities=(0.5, 0.95)))
    for layer in LAYERS:
        np.testing.assert_array_equal(loaded.model.get_layer(layer).kernel.numpy(), kernel(tiny / "tiny.keras", layer))


def test_weights_restored_when_a_trial_fails(tiny, monkeypatch):
    loaded = load(tiny / "tiny.h5")
    calls = []

    def failing(self, model):
        calls.append(model)
        if len(calls) == 3:  # dense, robust@0.5, then robust@0.9 fails mid-trial
            raise KeyboardInterrupt
        return {"loss": 0.0, "accuracy": 1.0}

    monkeypatch.setattr(Evaluator, "__call__", failing)
    with pytest.raises(KeyboardInterrupt):
        analyze(loaded, SensitivityOptions(EvalOptions(tiny / "val.npz"), sparsities=(0.5, 0.9)))
    for layer in LAYERS:
        np.testing.assert_array_equal(loaded.model.get_layer(layer).kernel.numpy(), kernel(tiny / "tiny.h5", layer))


def test_budget_writes_a_recipe(tiny):
    out = tiny / "recipe.toml"
    result = invoke(
        "sensitivity",
        tiny / "tiny.h5",
        "--data",
        tiny / "val.npz",
        "--sparsities",
        "0.5,0.9",
        "--budget",
        "0.02",
        "--recipe-out",
        out,
        "--force",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    recipe = tomllib.loads(out.read_text())
    # robust keeps a zero drop up to 0.9; fragile loses more than 0.02 at every tested sparsity
    assert recipe == {"step": [{"sparsity": 0.0, "layers": {"^robust$": {"sparsity": 0.9}}}]}
    assert report["budget"]["layers"] == {"robust": 0.9} and report["budget"]["left_dense"] == ["fragile"]
    assert report["budget"]["sparsity"] == pytest.approx(231 / (256 + 64))  # ceil(0.9 * 256) zeros
    assert report["recipe_path"] == str(out)
    assert out.read_text().startswith("# written by prunectl sensitivity ")
    # the rule, checked on the measured drops: the largest tested sparsity whose drop <= budget
    for row in report["layers"]:
        fitting = [t["sparsity"] for t in row["trials"] if t["drop"] <= 0.02]
        assert report["budget"]["layers"].get(row["layer"]) == (max(fitting) if fitting else None)


@pytest.mark.slow
def test_table_and_bars_on_stderr_json_only_on_stdout(tiny):
    table = invoke("sensitivity", tiny / "tiny.h5", "--data", tiny / "val.npz", "--sparsities", "0.5")
    assert table.exit_code == 0, table.output
    assert table.stdout == ""
    shown = " ".join(table.stderr.split())  # rich wraps titles to the table's width
    assert "Accuracy drop when one layer alone is pruned (dense accuracy 1.0000)" in shown
    assert "Fragile layers: drop at 50% sparsity Layer Drop fragile +0." in shown and "█" in shown
    machine = invoke("sensitivity", tiny / "tiny.h5", "--data", tiny / "val.npz", "--sparsities", "0.5", "--json", "-q")
    assert machine.exit_code == 0 and machine.stderr == ""
    data = json.loads(machine.stdout)
    assert data["schema_version"] == 1 and data["kind"] == "sensitivity"
    assert data["sparsities"] == [0.5] and data["evaluation"]["samples"] == 128


def test_loss_where_the_model_has_no_accuracy(tiny):
    result = invoke(
        "sensitivity",
        tiny / "tiny.h5",
        "--data",
        tiny / "val.npz",
        "--sparsities",
        "0.9",
        "--metrics",
        "sparse_categorical_crossentropy",
        "--include",
        "^fragile$",
        "--json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["metric"]["name"] == "loss" and data["metric"]["higher_is_better"] is False
    [row] = data["layers"]
    assert row["layer"] == "fragile" and row["trials"][0]["drop"] > 0  # the loss went up


@pytest.mark.parametrize(
    "args,code,line",
    [
        ((), 2, "Error: sensitivity measures each trial on validation data; add --data FILE. Received: no --data"),
        (
            ("--data", "{val}", "--sparsities", "0.5,1.2"),
            2,
            "Error: Invalid value for '--sparsities': --sparsities must be a finite number in [0, 1). "
            "Received: --sparsities=1.2",
        ),
        (
            ("--data", "{val}", "--sparsities", "abc"),
            2,
            "Error: Invalid value for '--sparsities': --sparsities must be a comma-separated list of numbers "
            "in [0, 1). "
            "Received: 'abc' in 'abc'",
        ),
        (
            ("--data", "{val}", "--budget", "-1"),
            2,
            "Error: Invalid value for '--budget': --budget must be a finite number >= 0. Received: --budget=-1.0",
        ),
        (
            ("--data", "{val}", "--recipe-out", "r.toml"),
            2,
            "Error: --recipe-out needs --budget D to choose the sparsities. "
            "Received: --recipe-out r.toml without --budget",
        ),
        (("--data", "{missing}"), 1, "Error: data file not found. Received: '{missing}'"),
        (
            ("--data", "{val}", "--include", "^nope$"),
            1,
            "Error: --include pattern matches no prunable layer (prunable layers: robust, fragile). Received: '^nope$'",
        ),
    ],
)
def test_errors_are_one_line(tiny, args, code, line):
    paths = {"val": tiny / "val.npz", "missing": tiny / "missing.npz"}
    result = invoke("sensitivity", tiny / "tiny.h5", *(a.format(**paths) for a in args))
    assert result.exit_code == code
    assert result.stdout == ""
    assert result.stderr.splitlines() == [line.format(**paths)]


def test_existing_recipe_is_not_overwritten_before_any_work(tiny):
    out = tiny / "taken.toml"
    out.write_text("keep")
    result = invoke("sensitivity", tiny / "tiny.h5", "--data", tiny / "val.npz", "--budget", "0.1", "--recipe-out", out)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: output file exists; pass --force to overwrite it. Received: {str(out)!r}"
    assert out.read_text() == "keep"


def test_parse_sparsities():
    assert parse_sparsities("0.9, 0.5,0.9") == (0.5, 0.9)
    for bad in ("", "0.5,", "nan", "1", "-0.1"):
        with pytest.raises(OptionError):
            parse_sparsities(bad)


def test_toml_writer_round_trips_through_tomllib():
    document = {
        "title": 'a "quoted" \\ name\n',
        "n": 3,
        "on": True,
        "xs": [1, 2.5, "s"],
        "step": [
            {"sparsity": 0.0, "layers": {r"^block\.1/conv$": {"sparsity": 0.5}, "^fc$": {"sparsity": 0.9}}},
            {"neuron-ratio": 0.25, "exclude": "^head$"},
        ],
        "finetune": {"epochs": 4, "data": "train.npz"},
        "empty": {},
    }
    assert tomllib.loads(dumps(document, ("a comment", "two\nlines"))) == document
    with pytest.raises(TypeError):
        dumps({"x": None})
