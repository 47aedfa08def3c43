"""A plan-only prune of a .keras file is written as the input edited: the same model apply_plan and a Keras save give.

Each test prunes the same file twice through the CLI, once by the rewrite and once with it turned off
(the Keras rebuild), and compares what was written: the config (less Keras' per-save object ids), every
weight's bytes, and the report.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from conftest import run, seeded_keras
from independent import read_weights

from prunectl.core.run import job


def _residual_dense_net():
    keras = seeded_keras()
    inputs = keras.Input((8, 8, 3), name="img")
    x = keras.layers.Conv2D(16, 3, padding="same", name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.Activation("relu", name="stem_relu")(x)
    y = keras.layers.Conv2D(16, 3, padding="same", name="res")(x)
    x = keras.layers.Add(name="add")([x, y])
    z = keras.layers.Conv2D(8, 1, name="grow")(x)
    x = keras.layers.Concatenate(name="cat")([x, z])
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(8, 1, name="mix")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(12, activation="relu", name="fc")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x), name="net")


def _strip(config):
    if isinstance(config, dict):
        return {k: _strip(v) for k, v in config.items() if k != "shared_object_id"}
    if isinstance(config, list):
        return [_strip(v) for v in config]
    return config


def _prune_both(tmp_path, monkeypatch, source, *args):
    used = []
    rewrite = job._rewrite

    def recorded(*args):
        result = rewrite(*args)
        used.append(result is not None)
        return result

    monkeypatch.setattr(job, "_rewrite", recorded)
    run("prune", source, *args, "-o", tmp_path / "fast.keras")
    monkeypatch.setattr(job, "_rewrite", lambda *a: None)
    run("prune", source, *args, "-o", tmp_path / "rebuilt.keras")
    return used


@pytest.mark.parametrize("args", [("--neuron-ratio", "0.5"), ("--neuron-ratio", "0.4", "--round-to", "4")])
def test_rewrite_writes_the_model_the_keras_rebuild_writes(tmp_path, monkeypatch, args):
    source = tmp_path / "net.keras"
    _residual_dense_net().save(source)
    assert _prune_both(tmp_path, monkeypatch, source, *args) == [True]  # the rewrite wrote it
    fast, rebuilt = tmp_path / "fast.keras", tmp_path / "rebuilt.keras"
    configs = [json.loads(zipfile.ZipFile(p).read("config.json")) for p in (fast, rebuilt)]
    assert _strip(configs[0]) == _strip(configs[1])
    assert configs[0]["config"]["layers"][1]["config"]["filters"] < 16  # something was pruned
    weights = [read_weights(p) for p in (fast, rebuilt)]
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[0].items():
        assert value.dtype == weights[1][key].dtype and value.shape == weights[1][key].shape, key
        assert value.tobytes() == weights[1][key].tobytes(), key
    reports = [json.loads((tmp_path / f"{n}.keras.report.json").read_text()) for n in ("fast", "rebuilt")]
    for key in ("layers", "totals", "structural", "engine"):
        assert reports[0].get(key) == reports[1].get(key), key
    keras = seeded_keras()
    x = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    outputs = [keras.models.load_model(p).predict_on_batch(x) for p in (fast, rebuilt)]
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_a_compiled_model_is_rebuilt_in_keras(tmp_path, monkeypatch):
    """Its compile settings are restored on the rebuilt model, and Keras writes them."""
    source = tmp_path / "net.keras"
    model = _residual_dense_net()
    model.compile(optimizer="adam", loss="mse")
    model.save(source)
    assert _prune_both(tmp_path, monkeypatch, source, "--neuron-ratio", "0.5") == []  # not even tried


@pytest.mark.parametrize("op", [False, True])
def test_rewrite_matches_the_rebuild_through_ops_and_unnamed_variables(tmp_path, monkeypatch, op):
    """keras.applications' LayerScale holds an unnamed variable (``variable``) and has no ``compute_output_shape``.

    Neither it nor an op node can be written as an edit: the rebuild writes the file, and the result is the same.
    """
    from keras.src.applications.convnext import LayerScale

    keras = seeded_keras()
    inputs = keras.Input((5,), name="x")
    hidden = keras.layers.Dense(6, name="a")(inputs)
    scale = LayerScale(0.5, 6, name="scale")
    hidden = scale(hidden) * 0.5 if op else scale(hidden)
    model = keras.Model(inputs, keras.layers.Dense(2, name="b")(hidden))
    scale.set_weights([np.linspace(0.1, 1.2, 6).astype("float32")])
    source = tmp_path / "scaled.keras"
    model.save(source)
    assert _prune_both(tmp_path, monkeypatch, source, "--neuron-ratio", "0.5") == [False]
    fast, rebuilt = tmp_path / "fast.keras", tmp_path / "rebuilt.keras"
    weights = [read_weights(p) for p in (fast, rebuilt)]
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[0].items():
        assert value.tobytes() == weights[1][key].tobytes(), key
    x = np.random.default_rng(0).random((4, 5), dtype=np.float32)
    outputs = [keras.models.load_model(p).predict_on_batch(x) for p in (fast, rebuilt)]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert outputs[0].shape == (4, 2)
