"""Dead channels in real architectures: structural pruning removes exactly them and changes no output.

:mod:`channel_trace` (which does not import prunectl.core) traces each model by
itself and makes a seeded subset of its removable channels exactly dead. The
CLI then prunes with ``--neuron-criterion l1 --neuron-threshold 1e-12``, under
which only dead units score below the threshold. The pruned model must have
each producer's units minus its dead ones, the report must drop exactly the
dead indices, and the outputs must not change.
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
}
# The only layer the tracer leaves alone in these models: EfficientNet's input Normalization.
KNOWN_UNKNOWN = {"EfficientNetB0": ["normalization"]}


def _units(layer) -> int:
    config = layer.get_config()
    return config["filters"] if "filters" in config else config["units"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_pruning_removes_exactly_the_dead_channels(tmp_path, name):
    keras = seeded_keras()
    side = ARCHITECTURES[name]
    # Logits, not softmax: a softmax would hide differences in its saturation.
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(side, side, 3), classes=10, classifier_activation=None
    )
    jitter_batchnorm(model, seed=1)
    assert trace(model).unknown == KNOWN_UNKNOWN.get(name, [])
    dead = kill_channels(model, seed=2)
    assert sum(map(len, dead.values())) > 100
    source, output, report = tmp_path / "dead.keras", tmp_path / "pruned.keras", tmp_path / "r.json"
    model.save(source)
    run("prune", source, "--neuron-criterion", "l1", "--neuron-threshold", "1e-12", "-o", output, "--report", report)

    pruned = keras.models.load_model(output, compile=False)
    expected = {n: _units(model.get_layer(n)) - len(d) for n, d in dead.items()}
    assert {n: _units(pruned.get_layer(n)) for n in dead} == expected
    groups = json.loads(report.read_text())["structural"]["groups"]
    dropped = {p: g["dropped"] for g in groups for p in g["producers"]}
    assert {n: dropped.get(n, []) for n in dead} == dead

    x = np.random.default_rng(3).random((4, side, side, 3)).astype("float32")
    before = keras.ops.convert_to_numpy(model(x, training=False))
    after = keras.ops.convert_to_numpy(pruned(x, training=False))
    assert np.abs(before).max() > 1e-2  # outputs of a useful size, so the tolerance below means something
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-5 * np.abs(before).max())
