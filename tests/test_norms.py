"""Normalizations over the channel axis are never a silent pass-through for structural pruning.

LayerNormalization (and RMS, Unit, one-group Group normalization) take statistics
over the channels, so removing channels, even exactly dead ones, changes the
outputs on the channels kept. ``norms="joint"`` prunes through them and the plan
notes the change (measured on calibration data); ``norms="boundary"`` leaves them
whole. The expected outputs are computed here by hand with numpy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run
from test_cli_errors import fails

from prunectl.core.errors import OptionError, SelectionError
from prunectl.core.structure.plan import NeuronPruning, apply_plan, plan_structure

DEAD = [1, 5]
X = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")


def _model(norm: str = "LayerNormalization", hidden: bool = False, **kwargs):
    """Dense(8) -> ``norm`` -> [Dense(6, relu)] -> Dense(2), with d1's units 1 and 5 exactly dead."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(8, name="d1")(inputs)
    h = getattr(keras.layers, norm)(name="norm", **kwargs)(h)
    if hidden:
        h = keras.layers.Dense(6, activation="relu", name="mid")(h)
    model = keras.Model(inputs, keras.layers.Dense(2, name="d2")(h))
    kernel, bias = model.get_layer("d1").get_weights()
    kernel[:, DEAD] = 0
    bias[DEAD] = 0
    model.get_layer("d1").set_weights([kernel, bias])
    # Non-trivial per-channel parameters, so slicing them wrongly would show.
    norm_layer = model.get_layer("norm")
    norm_layer.set_weights([np.linspace(0.5, 1.5, w.shape[0]).astype("float32") for w in norm_layer.get_weights()])
    return model


def _d1(model, x=X) -> np.ndarray:
    kernel, bias = model.get_layer("d1").get_weights()
    return x @ kernel + bias


def _layer_norm(h: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    return (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + eps) * gamma + beta


def _rms_norm(h: np.ndarray, scale: np.ndarray, eps: float) -> np.ndarray:
    return h / np.sqrt((h**2).mean(-1, keepdims=True) + eps) * scale


def test_layer_norm_joint_notes_the_measured_change():
    model = _model()
    plan = plan_structure(model, NeuronPruning(ratio=0.25, norms="joint"), X)
    assert [g.dropped for g in plan.groups if g.producers == ("d1",)] == [tuple(DEAD)]
    assert plan.boundaries == ()
    (note,) = plan.notes
    assert (note["layer"], note["class"], note["channels_before"], note["channels_after"]) == (
        "norm",
        "LayerNormalization",
        8,
        6,
    )
    assert "normalizes over the channels" in note["note"]
    gamma, beta = model.get_layer("norm").get_weights()
    eps = model.get_layer("norm").epsilon
    kept = np.setdiff1d(np.arange(8), DEAD)
    h = _d1(model)
    before = _layer_norm(h, gamma, beta, eps)[:, kept]
    after = _layer_norm(h[:, kept], gamma[kept], beta[kept], eps)
    assert note["max_abs_change"] == pytest.approx(np.abs(after - before).max(), rel=1e-4)
    assert note["mean_abs_change"] == pytest.approx(np.abs(after - before).mean(), rel=1e-4)
    assert note["max_abs_change"] > 0.05  # dead channels still move the statistics
    pruned = apply_plan(model, plan)
    assert pruned.get_layer("norm").get_weights()[0].tolist() == pytest.approx(gamma[kept].tolist())
    kernel, bias = model.get_layer("d2").get_weights()
    np.testing.assert_allclose(pruned.predict(X, verbose=0), after @ kernel[kept] + bias, atol=1e-4)
    assert plan.to_dict()["notes"] == [note]


def test_joint_without_data_notes_the_change_unmeasured():
    (note,) = plan_structure(_model(), NeuronPruning(ratio=0.25, norms="joint")).notes
    assert note["layer"] == "norm"
    assert note["max_abs_change"] is None and note["mean_abs_change"] is None


def test_layer_norm_boundary_prunes_nothing_feeding_it():
    model = _model(hidden=True)
    plan = plan_structure(model, NeuronPruning(ratio=0.25, norms="boundary"), X)
    assert ("norm", "LayerNormalization", "normalizes over the channels") in plan.boundaries
    assert plan.notes == ()
    (d1,) = [g for g in plan.groups if g.producers == ("d1",)]
    assert d1.dropped == () and d1.frozen
    (mid,) = [g for g in plan.groups if g.producers == ("mid",)]
    assert len(mid.dropped) == 1
    pruned = apply_plan(model, plan)
    assert pruned.get_layer("d1").get_weights()[0].shape == (4, 8)
    assert pruned.get_layer("mid").get_weights()[0].shape == (8, 5)


def test_boundary_with_nothing_else_to_prune_says_why():
    with pytest.raises(SelectionError, match=r"norm \(LayerNormalization\): normalizes over the channels"):
        plan_structure(_model(), NeuronPruning(ratio=0.25, norms="boundary"), X)


def test_rms_normalization_joint_measures_against_the_formula():
    model = _model("RMSNormalization")
    plan = plan_structure(model, NeuronPruning(ratio=0.25, norms="joint"), X)
    (note,) = plan.notes
    (scale,) = model.get_layer("norm").get_weights()
    eps = model.get_layer("norm").epsilon
    kept = np.setdiff1d(np.arange(8), DEAD)
    h = _d1(model)
    change = np.abs(_rms_norm(h[:, kept], scale[kept], eps) - _rms_norm(h, scale, eps)[:, kept])
    assert note["max_abs_change"] == pytest.approx(change.max(), rel=1e-4)
    assert apply_plan(model, plan).get_layer("norm").get_weights()[0].shape == (6,)


def test_group_normalization_with_several_groups_is_a_boundary():
    model = _model("GroupNormalization", hidden=True, groups=2)
    plan = plan_structure(model, NeuronPruning(ratio=0.25, norms="joint"), X)
    (reason,) = [r for name, _, r in plan.boundaries if name == "norm"]
    assert reason.startswith("groups=2")
    assert [g.dropped for g in plan.groups if g.producers == ("d1",)] == [()]
    assert plan.notes == ()


def test_group_normalization_with_one_group_is_pruned_jointly():
    model = _model("GroupNormalization", groups=1)
    plan = plan_structure(model, NeuronPruning(ratio=0.25, norms="joint"), X)
    (note,) = plan.notes
    gamma, beta = model.get_layer("norm").get_weights()
    eps = model.get_layer("norm").epsilon
    kept = np.setdiff1d(np.arange(8), DEAD)
    h = _d1(model)
    # One group over a (batch, channels) input is a layer norm over the channels.
    change = np.abs(_layer_norm(h[:, kept], gamma[kept], beta[kept], eps) - _layer_norm(h, gamma, beta, eps)[:, kept])
    assert note["max_abs_change"] == pytest.approx(change.max(), rel=1e-3)
    assert apply_plan(model, plan).get_layer("norm").get_weights()[0].shape == (6,)


NORMS = [
    ("LayerNormalization", {}),
    ("RMSNormalization", {}),
    ("UnitNormalization", {}),
    ("GroupNormalization", {"groups": 1}),
    ("GroupNormalization", {"groups": 2}),
]


@pytest.mark.parametrize("mode", ["joint", "boundary"])
@pytest.mark.parametrize(("norm", "kwargs"), NORMS, ids=[f"{n}{k}" for n, k in NORMS])
def test_never_silent(norm, kwargs, mode):
    """A plan through a normalization over the channels either lists it as a boundary or carries a note."""
    model = _model(norm, hidden=True, **kwargs)
    plan = plan_structure(model, NeuronPruning(ratio=0.25, norms=mode), X)
    boundary = [r for name, _, r in plan.boundaries if name == "norm"]
    noted = [n for n in plan.notes if n["layer"] == "norm"]
    assert len(boundary) + len(noted) == 1
    (d1,) = [g for g in plan.groups if g.producers == ("d1",)]
    assert bool(d1.dropped) == bool(noted)
    if noted:
        assert noted[0]["max_abs_change"] > 0


def test_boundary_is_the_default():
    plan = plan_structure(_model(hidden=True), NeuronPruning(ratio=0.25), X)
    assert ("norm", "LayerNormalization", "normalizes over the channels") in plan.boundaries


def test_norms_option_is_checked():
    with pytest.raises(OptionError, match=r"norms must be one of boundary, joint\. Received: norms='both'"):
        NeuronPruning(ratio=0.5, norms="both")
    step = NeuronPruning(ratio=0.5, norms="boundary")
    assert NeuronPruning.from_config(step.get_config()) == step


def test_cli_shows_the_boundary_or_the_measured_note(tmp_path):
    path = tmp_path / "ln.keras"
    _model(hidden=True).save(path)
    np.savez(tmp_path / "data.npz", x=X, y=np.zeros((len(X), 2), "float32"))
    shown = run("prune", path, "--neuron-ratio", "0.25", "--dry-run").stderr
    assert "Boundary (left whole): norm (LayerNormalization): normalizes over the channels" in shown
    assert "Note:" not in shown
    args = (
        "prune",
        path,
        "--neuron-ratio",
        "0.25",
        "--norms",
        "joint",
        "--neuron-criterion",
        "activation",
        "--data",
        tmp_path / "data.npz",
    )
    shown = " ".join(run(*args, "--dry-run").stderr.split())
    assert "Note: norm (LayerNormalization) normalizes over the channels: removing 2 of its 8 input channels" in shown
    assert "max |change|" in shown and "on the calibration data" in shown
    report = json.loads(run(*args, "--dry-run", "--json", "-q").stdout)
    (note,) = report["structural"]["notes"]
    assert note["layer"] == "norm" and note["max_abs_change"] > 0


def test_cli_norms_needs_a_structural_step(tmp_path):
    path = tmp_path / "ln.keras"
    _model(hidden=True).save(path)
    fails(
        tmp_path,
        "prune",
        path,
        "--sparsity",
        "0.5",
        "--norms",
        "boundary",
        code=2,
        line="Error: --norms needs --neuron-threshold or --neuron-ratio. Received: --norms boundary",
    )


def test_convnext_blocks_joint_prunes_the_residual_stream_boundary_only_the_expansions():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("bench_layernorm", REPO / "benchmarks" / "layernorm.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import keras

    keras.utils.set_random_seed(0)
    model = bench.convnext(keras, 8, 2)
    boundary = plan_structure(model, NeuronPruning(ratio=0.5))
    joint = plan_structure(model, NeuronPruning(ratio=0.5, norms="joint"))

    def units(plan):
        return {r.layer: r.units_after for r in plan.layers if r.units_after is not None}

    assert units(boundary) == {"stem": 8, "expand0": 16, "project0": 8, "expand1": 16, "project1": 8, "head": 10}
    assert units(joint) == {"stem": 4, "expand0": 16, "project0": 4, "expand1": 16, "project1": 4, "head": 10}
    assert sorted(name for name, _, _ in boundary.boundaries) == ["ln0", "ln1"]
    assert joint.boundaries == () and [n["layer"] for n in joint.notes] == ["ln0", "ln1"]
    x = np.random.default_rng(0).random((16, 8, 8, 1)).astype("float32")
    assert apply_plan(model, joint).predict(x, verbose=0).shape == (16, 10)


def test_recipe_step_takes_norms(tmp_path):
    path = tmp_path / "ln.keras"
    _model(hidden=True).save(path)
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[step]]\nneuron-ratio = 0.25\nnorms = "joint"\n')
    report = json.loads(run("prune", path, "--recipe", recipe, "--dry-run", "--json", "-q").stdout)
    assert [note["layer"] for note in report["structural"]["notes"]] == ["norm"]
    recipe.write_text('[[step]]\nneuron-ratio = 0.25\nnorms = "both"\n')
    fails(
        tmp_path,
        "prune",
        path,
        "--recipe",
        recipe,
        code=2,
        line=f"Error: recipe {recipe} line 3, step 1: norms must be one of boundary, joint. Received: norms = 'both'",
    )
