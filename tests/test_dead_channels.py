"""Dead channels in real architectures: structural pruning removes exactly them and changes no output.

:mod:`channel_trace` (which does not import prunectl.core) traces each model by
itself and makes a seeded subset of its removable channels exactly dead. The
CLI then prunes with ``--neuron-criterion l1 --neuron-threshold 1e-12``, under
which only dead units score below the threshold. The pruned model must have
each producer's units minus its dead ones, the report must drop exactly the
dead indices, and the outputs must not change (the models are float64, so "not
change" means to within float64 rounding).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from channel_trace import jitter_batchnorm, kill_channels, trace
from conftest import run, seeded_keras

# name -> input side (the smallest each accepts, or 32).
ARCHITECTURES = {
    "ResNet50": 32,
    "MobileNetV2": 32,
    "EfficientNetB0": 32,
    "DenseNet121": 32,
    "Xception": 71,
    "MobileNetV3Small": 32,
    "InceptionV3": 75,  # BatchNormalization without gamma (scale=False)
    "VGG16": 32,  # Flatten into Dense
    # A residual add of a concatenation and one producer: the producer's units are split between groups.
    "InceptionResNetV2": 75,
    "NASNetMobile": 32,
}
# The only layer the tracer leaves alone in these models: EfficientNet's input Normalization.
KNOWN_UNKNOWN = {"EfficientNetB0": ["Normalization"]}  # classes: layer names depend on what was built before


@pytest.fixture
def float64():
    """Models built in float64: pruning dead channels is exact, so outputs must agree to float64 rounding.

    In float32 the reordered sums of a smaller layer differ by about 1e-7, which
    BatchNormalization with real statistics amplifies to 1e-4 at the logits:
    far above the rounding the check is about, and too close to a real error.
    """
    keras = seeded_keras()
    # Layers follow the global dtype policy, inputs floatx; the policy stays fixed once a layer was built.
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield keras
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(policy)


def _units(layer) -> int:
    config = layer.get_config()
    return config["filters"] if "filters" in config else config["units"]


def tiny_model():
    """Every rule of the tracer once: a residual add, an SE gate, ``x + 3`` and ``x / 6`` op nodes, a concat."""
    keras = seeded_keras()
    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(8, 3, padding="same", activation="relu", name="a")(inputs)
    b = layers.BatchNormalization(name="bn")(layers.Conv2D(8, 1, name="b")(a))
    s = layers.Add()([b, layers.Conv2D(8, 1, name="c")(a)])
    gate = layers.Conv2D(8, 1, activation="sigmoid", name="e")(layers.GlobalAveragePooling2D(keepdims=True)(s))
    s = layers.Multiply()([s, gate])
    d = layers.Conv2D(4, 1, activation="sigmoid", name="d")(s)
    plus = layers.Conv2D(8, 1, name="plus")(s) + 3.0
    scaled = layers.Conv2D(8, 1, name="scaled")(s) * (1.0 / 6.0)
    joined = layers.Concatenate()([layers.Conv2D(8, 1, name="f")(d), a, plus, scaled])
    mixed = layers.Conv2D(8, 1, name="mix")(joined)
    outputs = layers.Dense(5, name="head")(layers.GlobalAveragePooling2D()(mixed))
    return keras.Model(inputs, outputs)


def test_tracer_knows_which_channels_can_die():
    killable = {tuple(sorted(names)): len(roots) for names, roots in trace(tiny_model()).killable().items()}
    assert killable == {
        ("a",): 8,
        ("b", "c", "e"): 8,  # coupled by the add and the gate; the sigmoid gate is zero where its partner is
        ("d",): 0,  # sigmoid(0) = 0.5 reaches f
        ("f",): 8,
        ("plus",): 0,  # 0 + 3 reaches mix
        ("scaled",): 8,
        ("mix",): 8,
        ("head",): 0,  # model output
    }


def check_dead_channels_removed(keras, model, folder, x) -> None:
    """Kill channels of ``model``, prune it through the CLI, and check the units, the report and the outputs."""
    dead = kill_channels(model, seed=2)
    assert sum(map(len, dead.values())) > 0
    source, output, report = folder / "dead.keras", folder / "pruned.keras", folder / "r.json"
    model.save(source)
    run("prune", source, "--neuron-criterion", "l1", "--neuron-threshold", "1e-12", "-o", output, "--report", report)

    pruned = keras.models.load_model(output, compile=False)
    expected = {n: _units(model.get_layer(n)) - len(d) for n, d in dead.items()}
    assert {n: _units(pruned.get_layer(n)) for n in dead} == expected
    structural = json.loads(report.read_text())["structural"]
    groups = {g["id"]: g for g in structural["groups"]}
    dropped = {}
    for row in structural["layers"]:
        # A producer's units are its groups' units in order (several groups where a residual add split them).
        offset, dropped[row["layer"]] = 0, []
        for gid in row["groups"]:
            dropped[row["layer"]] += [offset + i for i in groups[gid]["dropped"]]
            offset += groups[gid]["units_before"]
    assert {n: dropped.get(n, []) for n in dead} == dead

    before = keras.ops.convert_to_numpy(model(x, training=False))
    after = keras.ops.convert_to_numpy(pruned(x, training=False))
    # Outputs that depend on the input, so that agreeing on them means something; the tolerance is relative.
    assert not np.allclose(before[0], before[1], rtol=1e-3, atol=0)
    assert before.dtype == after.dtype == np.float64
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-9 * np.abs(before).max())


def test_dead_channels_of_a_tiny_model_are_removed_exactly(tmp_path, float64):
    model = tiny_model()
    x = np.random.default_rng(3).random((4, 8, 8, 3))
    jitter_batchnorm(model, x, seed=1)
    check_dead_channels_removed(float64, model, tmp_path, x)


# prunectl leaves these groups whole where this check removes their dead channels: a merge whose inputs
# have different layouts (the segments of a Concatenate on one side, one producer's group on the other)
# freezes them ("inputs of ... do not line up"), where a position-wise union would couple the channels.
@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_pruning_removes_exactly_the_dead_channels(tmp_path, float64, name):
    keras = float64
    side = ARCHITECTURES[name]
    # Logits, not softmax: a softmax would hide differences in its saturation.
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(side, side, 3), classes=10, classifier_activation=None
    )
    x = np.random.default_rng(3).random((4, side, side, 3))
    jitter_batchnorm(model, x, seed=1)
    unknown = [model.get_layer(n).__class__.__name__ for n in trace(model).unknown]
    assert unknown == KNOWN_UNKNOWN.get(name, [])
    check_dead_channels_removed(keras, model, tmp_path, x)
