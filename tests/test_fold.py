"""core/fold.py: BatchNormalization folded into the layer before it, checked against the unfolded model."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build_functional, build_sequential, sample_inputs

from prunectl.core.structure.fold import fold_batchnorm, foldable_pairs


def _with_statistics(model, seed=0):
    """Give every BatchNormalization non-trivial moving statistics and affine parameters."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.__class__.__name__ == "BatchNormalization":
            draw = {
                "gamma": lambda n: rng.uniform(0.5, 2, n),
                "beta": lambda n: rng.normal(size=n),
                "moving_mean": lambda n: rng.normal(size=n),
                "moving_variance": lambda n: rng.uniform(0.1, 3, n),
            }
            layer.set_weights([draw[w.name](w.shape) for w in layer.weights])
    return model


def _bn_zoo():
    import keras

    keras.utils.set_random_seed(7)
    x = inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, use_bias=False, name="c1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="r1")(x)
    skip = keras.layers.Conv2D(6, 1, activation="relu", name="c2")(x)
    y = keras.layers.BatchNormalization(name="bn_act")(skip)  # producer has an activation: kept
    z = keras.layers.Conv2D(6, 1, name="c3")(x)
    y2 = keras.layers.BatchNormalization(name="bn_shared")(z)  # c3 also feeds the Add: kept
    x = keras.layers.Add(name="add")([y, y2, z])
    x = keras.layers.BatchNormalization(axis=1, name="bn_axis")(x)  # not the channel axis: kept
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(5, name="fc")(x)
    x = keras.layers.BatchNormalization(center=False, scale=False, name="bn_fc")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))


def _bn_sequential():
    import keras

    keras.utils.set_random_seed(3)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, name="d1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(2, name="d2"),
        ]
    )


@pytest.mark.parametrize(
    "build, expected",
    [
        (build_functional, {"bn": "conv"}),
        (build_sequential, {}),
        (_bn_sequential, {"bn": "d1"}),
        (_bn_zoo, {"bn1": "c1", "bn_fc": "fc"}),
    ],
)
def test_fold_keeps_outputs_and_replaces_batchnorm_by_identity(build, expected):
    model = _with_statistics(build())
    x = sample_inputs(model, n=16)
    assert foldable_pairs(model) == expected
    folded, pairs = fold_batchnorm(model)
    assert pairs == expected
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    classes = {layer.name: layer.__class__.__name__ for layer in folded.layers}
    assert all(classes[bn] == "Identity" for bn in expected)
    assert all(folded.get_layer(p).use_bias for p in expected.values())
    names = [[layer.name for layer in m.layers if layer.__class__.__name__ != "InputLayer"] for m in (folded, model)]
    assert names[0] == names[1]


def test_folded_model_round_trips_through_a_keras_file(tmp_path):
    import keras

    model = _with_statistics(build_functional())
    folded, _ = fold_batchnorm(model)
    folded.save(tmp_path / "folded.keras")
    loaded = keras.models.load_model(tmp_path / "folded.keras", compile=False)
    x = sample_inputs(model, n=8)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
