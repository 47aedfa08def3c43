"""A user's own layer class, registered in the layer table: the README's "Custom layers" example.

The pruned files are checked by reading them with h5py (tests/independent.py),
and the structurally pruned model against the original with the removed units'
outgoing weights zeroed by hand.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import keras  # noqa: E402  (the layer class below is defined at import, as a user's module would)
import numpy as np
import pytest
from click.testing import CliRunner
from independent import kernel, read_weights

from prunectl.cli.main import cli
from prunectl.core.errors import OptionError, SelectionError, SetupError
from prunectl.core.layers import ENTRY_POINT_GROUP, LayerSpec, Rule, WeightSpec, get_spec, layer_spec, register_layer
from prunectl.core.layers import spec as table
from prunectl.core.structure.plan import NeuronPruning, apply_plan, plan_structure


@keras.saving.register_keras_serializable(package="prunectl_tests")
class ScaledDense(keras.layers.Layer):
    """A Dense layer whose outputs are multiplied by a learned per-unit scale."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")
        self.scale = self.add_weight(shape=(self.units,), initializer="ones", name="scale")

    def call(self, x):
        return (x @ self.kernel + self.bias) * self.scale

    def get_config(self):
        return {**super().get_config(), "units": self.units}


SPEC = LayerSpec(
    prunable=(WeightSpec("kernel", index=0),),
    rule=Rule(
        "producer",
        units="units",
        in_axes=(("kernel", 0, None),),
        out_axes=(("kernel", -1), ("bias", 0), ("scale", 0)),
        fold="dense",
    ),
    mac_weights={"kernel": "output"},
)


@pytest.fixture(autouse=True)
def own_table(monkeypatch):
    """Each test registers into a copy of the table, and entry points are read afresh."""
    monkeypatch.setattr(table, "_TABLE", dict(table._TABLE))
    monkeypatch.setattr(table, "_entry_points_loaded", False)
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [])


def build_model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8,))
    hidden = ScaledDense(16, name="scaled")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(hidden))
    scaled = model.get_layer("scaled")
    scaled.bias.assign(np.linspace(-1, 1, 16).astype("float32"))
    scaled.scale.assign(np.linspace(0.5, 2, 16).astype("float32"))
    return model


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def scaled_weights(path):
    """(kernel, bias, scale) of the ``scaled`` layer, read with h5py."""
    weights = read_weights(path)
    if path.suffix == ".keras":
        return tuple(weights[f"scaled/{i}"] for i in range(3))
    return tuple(next(v for k, v in weights.items() if k.endswith(f"scaled/{n}")) for n in ("kernel", "bias", "scale"))


@pytest.mark.parametrize("fmt", [".keras", ".h5"])
def test_registered_layers_kernel_is_reported_and_pruned(tmp_path, fmt):
    source = tmp_path / f"scaled{fmt}"
    build_model().save(source)
    layers = json.loads(run("report", source, "--json").output)["layers"]
    assert [row["layer"] for row in layers] == ["head"]  # unknown class: nothing of it is prunable

    register_layer("ScaledDense", SPEC)
    layers = json.loads(run("report", source, "--json").output)["layers"]
    assert [(row["layer"], row["weight"], row["prunable"]) for row in layers] == [
        ("scaled", "kernel", True),
        ("head", "kernel", True),
    ]
    out = tmp_path / f"out{fmt}"
    run("prune", source, "--sparsity", "0.5", "-o", out)
    pruned, bias, scale = scaled_weights(out)
    original, bias_before, scale_before = scaled_weights(source)
    assert int((pruned == 0).sum()) == pruned.size // 2
    kept = pruned != 0
    np.testing.assert_array_equal(pruned[kept], original[kept])
    assert np.abs(pruned[kept]).min() >= np.abs(original[~kept]).max()
    np.testing.assert_array_equal(bias, bias_before)  # not in the spec's prunable weights
    np.testing.assert_array_equal(scale, scale_before)
    assert np.array_equal(kernel(out, "scaled"), pruned)


def test_structural_pruning_treats_a_registered_layer_as_a_producer():
    model = build_model()
    step = NeuronPruning(ratio=0.5)
    with pytest.raises(SelectionError, match=r"boundaries: scaled \(ScaledDense\): no rule for class ScaledDense"):
        plan_structure(model, step)

    register_layer(ScaledDense, SPEC)
    plan = plan_structure(model, step)
    (group,) = [g for g in plan.groups if "scaled" in g.producers]
    assert len(group.dropped) == 8
    row = next(r for r in plan.layers if r.layer == "scaled")
    assert (row.units_before, row.units_after, row.flops_before, row.flops_after) == (16, 8, 8 * 16, 8 * 8)
    pruned = apply_plan(model, plan)
    assert pruned.get_layer("scaled").units == 8

    # The original with the removed units' outgoing weights zeroed by hand computes the same.
    masked = build_model()
    head = masked.get_layer("head")
    head_kernel = head.kernel.numpy()
    head_kernel[list(group.dropped)] = 0
    head.kernel.assign(head_kernel)
    x = np.random.default_rng(0).normal(size=(5, 8)).astype("float32")
    np.testing.assert_allclose(pruned.predict(x, verbose=0), masked.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_cli_removes_units_of_a_registered_layer(tmp_path):
    source = tmp_path / "scaled.keras"
    build_model().save(source)
    register_layer("ScaledDense", SPEC)
    out = tmp_path / "small.keras"
    run("prune", source, "--neuron-ratio", "0.5", "-o", out)
    pruned, bias, scale = scaled_weights(out)
    assert pruned.shape == (8, 8) and bias.shape == scale.shape == (8,)


def test_layer_spec_decorator_registers_the_class_by_name():
    @layer_spec(LayerSpec(prunable=(WeightSpec("kernel", 0),)))
    class Tiny(keras.layers.Layer):
        pass

    assert get_spec("Tiny").prunable_weight("kernel") == WeightSpec("kernel", 0)
    assert Tiny.__name__ == "Tiny"


def test_register_layer_rejects_what_is_not_a_spec():
    with pytest.raises(OptionError, match=r"a layer spec must be a LayerSpec. Received: Tiny=\{'kernel': 0\}"):
        register_layer("Tiny", {"kernel": 0})
    with pytest.raises(OptionError, match=r"rule kind must be one of .*Received: Tiny kind='producr'"):
        register_layer("Tiny", LayerSpec(rule=Rule("producr", units="units")))


def entry_point(name, loaded):
    calls = []

    def load():
        calls.append(name)
        if isinstance(loaded, Exception):
            raise loaded
        return loaded

    return SimpleNamespace(name=name, value=f"{name}_pkg:SPECS", group=ENTRY_POINT_GROUP, load=load), calls


def test_entry_point_specs_load_once_on_the_first_lookup(monkeypatch):
    point, calls = entry_point("mine", {"ScaledDense": SPEC})
    asked = []
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: asked.append(group) or [point])
    assert calls == []  # nothing is read at import or before a lookup
    assert get_spec("ScaledDense") is SPEC
    assert get_spec("Dense").foldable
    assert calls == ["mine"] and asked == [ENTRY_POINT_GROUP]


def test_entry_point_function_may_register_itself_and_code_wins(monkeypatch):
    other = LayerSpec(prunable=(WeightSpec("scale", 2),))

    def register():
        register_layer("Other", other)

    point, _ = entry_point("mine", register)
    overridden, _ = entry_point("theirs", {"ScaledDense": LayerSpec()})
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [point, overridden])
    register_layer("ScaledDense", SPEC)  # loads the entry points first, then wins over them
    assert get_spec("Other") is other
    assert get_spec("ScaledDense") is SPEC


@pytest.mark.parametrize(
    "loaded, message",
    [
        (ImportError("no module named broken_pkg"), "cannot load layer specs from entry point 'broken'"),
        (["ScaledDense"], "must give a mapping of class names to LayerSpec. Received: broken=list"),
        ({"ScaledDense": "kernel"}, "entry point 'broken': a layer spec must be a LayerSpec"),
    ],
)
def test_a_broken_entry_point_is_a_setup_error(monkeypatch, loaded, message):
    point, _ = entry_point("broken", loaded)
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [point])
    with pytest.raises(SetupError, match=message):
        get_spec("Dense")
