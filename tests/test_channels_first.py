"""channels_first convolutions: their channels (axis 1) are pruned like channels-last ones.

Channels are made exactly dead by hand (a zero filter and bias before a ReLU, and a
BatchNormalization(axis=1) whose beta and moving mean are zero on them); the CLI
prunes by the l1 criterion below a threshold only dead channels fall under; the
pruned file, read back with stock Keras, must hold the original kernels without the
dead filters and their input rows, and give the same outputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run, seeded_keras

DEAD = {"c1": [0, 5], "c2": [1, 2, 4]}


def kill(model):
    for name, dead in DEAD.items():
        kernel, bias = model.get_layer(name).get_weights()
        kernel[..., dead] = 0
        bias[dead] = 0
        model.get_layer(name).set_weights([kernel, bias])
    gamma, beta, mean, variance = model.get_layer("bn").get_weights()
    beta[DEAD["c1"]] = 0
    mean[DEAD["c1"]] = 0
    model.get_layer("bn").set_weights([gamma, beta, mean, variance])


def build(head: str, dims: int = 2):
    """c1 -> BatchNormalization(axis=1) -> c2 -> pooling -> ``head`` -> Dense, all channels_first."""
    keras = seeded_keras()
    layers = keras.layers
    conv = getattr(layers, f"Conv{dims}D")
    first = {"data_format": "channels_first"}
    inputs = keras.Input((3,) + (9,) * dims)
    x = conv(8, 3, activation="relu", name="c1", **first)(inputs)
    x = layers.BatchNormalization(axis=1, name="bn")(x)
    x = conv(6, 3, activation="relu", name="c2", **first)(x)
    x = getattr(layers, f"MaxPooling{dims}D")(2, **first)(x)
    if head == "gap":
        x = getattr(layers, f"GlobalAveragePooling{dims}D")(**first)(x)
    else:
        x = layers.Flatten(**first)(x)
    model = keras.Model(inputs, layers.Dense(3, name="out")(x))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        weights = layer.get_weights()
        if layer.name == "bn":  # statistics that move every live channel
            weights = [rng.uniform(0.5, 2, w.shape).astype("float32") for w in weights]
        elif weights:
            weights[-1] = rng.normal(size=weights[-1].shape).astype("float32")
        layer.set_weights(weights)
    kill(model)
    return model


def inputs(model, n=8):
    return np.random.default_rng(1).normal(size=(n, *model.input_shape[1:])).astype("float32")


def kept(layer, dead):
    return [u for u in range(layer.get_config()["filters"]) if u not in dead]


@pytest.mark.parametrize(
    ("head", "dims", "fmt"),
    [("gap", 2, ".keras"), ("flatten", 2, ".h5"), ("flatten", 1, ".keras"), ("gap", 3, ".keras")],
)
def test_dead_channels_first_channels_are_removed_exactly(head, dims, fmt, tmp_path):
    import keras

    model = build(head, dims)
    source, output, report = tmp_path / f"in{fmt}", tmp_path / f"out{fmt}", tmp_path / "r.json"
    model.save(source)
    run("prune", source, "--neuron-criterion", "l1", "--neuron-threshold", "1e-12", "-o", output, "--report", report)
    pruned = keras.saving.load_model(output)
    keep1, keep2 = kept(model.get_layer("c1"), DEAD["c1"]), kept(model.get_layer("c2"), DEAD["c2"])
    # Keras kernels are (spatial..., in, out) in both data formats.
    c1, c2 = model.get_layer("c1").get_weights(), model.get_layer("c2").get_weights()
    np.testing.assert_array_equal(pruned.get_layer("c1").get_weights()[0], c1[0][..., keep1])
    np.testing.assert_array_equal(pruned.get_layer("c2").get_weights()[0], c2[0][..., keep1, :][..., keep2])
    np.testing.assert_array_equal(
        pruned.get_layer("bn").get_weights()[0], model.get_layer("bn").get_weights()[0][keep1]
    )
    # Flatten(channels_first) moves the channels last first: feature p * channels + c.
    out = model.get_layer("out").get_weights()[0]
    rows = out if head == "gap" else out.reshape(-1, 6, 3)[:, keep2].reshape(-1, 3)
    np.testing.assert_array_equal(pruned.get_layer("out").get_weights()[0], rows[keep2] if head == "gap" else rows)
    dropped = {g["producers"][0]: g["dropped"] for g in json.loads(report.read_text())["structural"]["groups"]}
    assert dropped["c1"] == DEAD["c1"] and dropped["c2"] == DEAD["c2"]
    x = inputs(model)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_activation_criterion_measures_channels_on_axis_1():
    from prunectl.core.structure.plan import NeuronPruning, apply_plan, plan_structure

    model = build("gap")
    x = inputs(model, 16)
    plan = plan_structure(model, NeuronPruning("activation", threshold=1e-12), x)
    # c2 reads c1's dead channels after the BatchNormalization, which keeps them exactly zero.
    # Live c2 channels whose ReLU is zero on every input here score zero too: dead on this data.
    dropped = {g.producers[0]: set(g.dropped) for g in plan.groups}
    assert dropped["c1"] == set(DEAD["c1"]) and set(DEAD["c2"]) <= dropped["c2"]
    pruned = apply_plan(model, plan)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_costs_match_the_channels_last_model():
    """The same network in either format has the same params and multiply-adds, before and after."""
    from prunectl.core.structure.plan import NeuronPruning, plan_structure

    keras = seeded_keras()

    def network(data_format, shape):
        inputs = keras.Input(shape)
        x = keras.layers.Conv2D(8, 3, activation="relu", data_format=data_format)(inputs)
        x = keras.layers.SeparableConv2D(6, 3, data_format=data_format)(x)
        x = keras.layers.GlobalAveragePooling2D(data_format=data_format)(x)
        return keras.Model(inputs, keras.layers.Dense(2)(x))

    totals = [
        plan_structure(network(f, s), NeuronPruning(ratio=0.5)).totals()
        for f, s in (("channels_first", (3, 9, 9)), ("channels_last", (9, 9, 3)))
    ]
    for key in ("params", "flops"):
        assert totals[0][key]["before"] == totals[1][key]["before"] > totals[0][key]["after"]
        assert totals[0][key]["after"] == totals[1][key]["after"]


def test_channel_major_flatten_and_wrong_axis_freeze_with_reasons():
    from prunectl.core.structure.graph import build_graph

    keras = seeded_keras()
    inputs = keras.Input((3, 6, 6))
    a = keras.layers.Conv2D(4, 3, data_format="channels_first", name="a")(inputs)
    b = keras.layers.Conv2D(4, 3, data_format="channels_first", name="b")(inputs)
    flat = keras.layers.Flatten(data_format="channels_last", name="flat")(a)  # channel-major features
    normed = keras.layers.BatchNormalization(axis=-1, name="bn_last")(b)  # normalizes a spatial axis
    pooled = keras.layers.GlobalAveragePooling2D(data_format="channels_first")(normed)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Concatenate()([flat, pooled])))
    graph = build_graph(model)
    frozen = {g.producers[0]: g.frozen for g in graph.groups if g.producers}
    assert frozen["a"] == "flat (Flatten) reads axis 3, its input's channels are on axis 1"
    assert frozen["b"] == "feeds bn_last (BatchNormalization)"
    reasons = {info.name: info.reason for info in graph.boundaries}
    assert reasons["bn_last"] == "axis=-1 is not the channel axis (1)"
