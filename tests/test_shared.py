"""Layers called at several sites: one set of weights, so every call keeps the same channels.

Units are made exactly dead by hand (kernel column and bias zero, ReLU after);
``--neuron-criterion l1 --neuron-threshold 1e-12`` removes exactly them, and the
pruned model, reloaded in stock Keras, gives the original outputs. Shapes are
read from the saved files with h5py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run, seeded_keras
from test_nested import DEAD, kill, saved_kernels


def _shared_dense_model():
    """Two branches (``left``, ``right``) into one shared Dense, whose two outputs are added, then ``head``."""
    keras = seeded_keras()
    a, b = keras.Input((5,), name="a"), keras.Input((4,), name="b")
    left = keras.layers.Dense(8, activation="relu", name="left")(a)
    right = keras.layers.Dense(8, activation="relu", name="right")(b)
    shared = keras.layers.Dense(6, activation="relu", name="shared")
    act = keras.layers.Activation("relu", name="act")  # shared without weights
    x = keras.layers.Add()([act(shared(left)), act(shared(right))])
    model = keras.Model([a, b], keras.layers.Dense(2, name="head")(x))
    kill(model.get_layer("left"), [1, 6])
    kill(model.get_layer("right"), [1, 6])
    kill(model.get_layer("shared"), [0, 3])
    return model


def _x(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(16, 5)).astype("float32"), rng.normal(size=(16, 4)).astype("float32")]


def _plan(path, *options):
    return json.loads(run("prune", path, *options, "--dry-run", "--json", "-q").stdout)["structural"]


@pytest.mark.parametrize("fmt", [".keras", ".h5"])
def test_shared_dense_keeps_one_set_of_channels_and_outputs_do_not_move(tmp_path, fmt):
    import keras

    model = _shared_dense_model()
    path, out = tmp_path / f"shared{fmt}", tmp_path / f"pruned{fmt}"
    model.save(path)
    plan = _plan(path, *DEAD)
    groups = {tuple(sorted(g["producers"])): g["dropped"] for g in plan["groups"]}
    # The shared Dense reads both branches with one kernel: their units go together.
    assert groups[("left", "right")] == [1, 6] and groups[("shared",)] == [0, 3]
    assert plan["boundaries"] == []
    run("prune", path, *DEAD, "-o", out, "-q")
    assert sorted(k.shape for k in saved_kernels(out).values()) == [(4, 2), (4, 6), (5, 6), (6, 4)]
    pruned = keras.models.load_model(out)
    np.testing.assert_allclose(pruned.predict(_x(), verbose=0), model.predict(_x(), verbose=0), atol=1e-5)


def test_a_dead_unit_on_one_branch_only_is_kept(tmp_path):
    model = _shared_dense_model()
    kill(model.get_layer("left"), [3])  # right's unit 3 is alive: the shared kernel row is still read
    path = tmp_path / "shared.keras"
    model.save(path)
    groups = {tuple(sorted(g["producers"])): g["dropped"] for g in _plan(path, *DEAD)["groups"]}
    assert groups[("left", "right")] == [1, 6]


def test_shared_activation_moves_each_calls_channels_on_its_own(tmp_path):
    keras = seeded_keras()
    a = keras.Input((5,))
    act = keras.layers.ReLU(name="act")
    x = act(keras.layers.Dense(8, name="p")(a))
    y = act(keras.layers.Dense(6, name="q")(a))
    model = keras.Model(a, keras.layers.Dense(2, name="head")(keras.layers.Concatenate()([x, y])))
    path = tmp_path / "act.keras"
    model.save(path)
    producers = sorted(tuple(g["producers"]) for g in _plan(path, "--neuron-ratio", "0.5")["groups"])
    assert producers == [("head",), ("p",), ("q",)]


def test_shared_layer_whose_calls_do_not_line_up_is_a_boundary(tmp_path):
    keras = seeded_keras()
    image, flat = keras.Input((2, 2, 3), name="image"), keras.Input((16,), name="flat")
    conv = keras.layers.Flatten()(keras.layers.Conv2D(4, 1, name="conv")(image))  # 4 positions x 4 channels
    dense = keras.layers.Dense(16, name="dense")(flat)  # 16 channels of one group
    shared = keras.layers.Dense(3, name="shared")
    merged = keras.layers.Concatenate()([shared(conv), shared(dense)])
    tail = keras.layers.Dense(5, name="tail")(merged)
    model = keras.Model([image, flat], keras.layers.Dense(2, name="head")(tail))
    path = tmp_path / "mismatch.keras"
    model.save(path)
    plan = _plan(path, "--neuron-ratio", "0.5")
    boundaries = {b["layer"]: b["reason"] for b in plan["boundaries"]}
    assert boundaries == {"shared": "shared layer: its calls' inputs do not line up (different widths or blocks)"}
    frozen = {g["producers"][0]: g["frozen"] for g in plan["groups"]}
    assert frozen["conv"] and frozen["dense"] and frozen["shared"] and not frozen["tail"]


def test_shared_nested_model_is_one_set_of_weights_in_the_pruned_file(tmp_path):
    import keras

    seeded_keras()
    enc_in = keras.Input((8,))
    encoder = keras.Model(enc_in, keras.layers.Dense(5, activation="relu", name="inner")(enc_in), name="encoder")
    a, b = keras.Input((3,), name="a"), keras.Input((3,), name="b")
    left = keras.layers.Dense(8, activation="relu", name="left")(a)
    right = keras.layers.Dense(8, activation="relu", name="right")(b)
    merged = keras.layers.Concatenate()([encoder(left), encoder(right)])
    model = keras.Model([a, b], keras.layers.Dense(1, name="head")(merged))
    kill(model.get_layer("left"), [2])
    kill(model.get_layer("right"), [2, 5])  # unit 5 alive on the left: kept
    kill(encoder.get_layer("inner"), [1])
    path, out = tmp_path / "twice.keras", tmp_path / "pruned.keras"
    model.save(path)
    run("prune", path, *DEAD, "-o", out, "-q")
    assert sorted(k.shape for k in saved_kernels(out).values()) == [(3, 7), (3, 7), (7, 4), (8, 1)]
    pruned = keras.models.load_model(out)
    x = [np.random.default_rng(s).normal(size=(16, 3)).astype("float32") for s in (1, 2)]
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
