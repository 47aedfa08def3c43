"""Models used as layers inside other models: pruned inside, structurally and by weight.

Units are made exactly dead by hand (kernel column and bias zero, ReLU after), so
``--neuron-criterion l1 --neuron-threshold 1e-12`` removes exactly them; the
pruned file is reloaded in stock Keras and must give the original outputs. Kernel
shapes and zeros are read from the saved files with h5py (:func:`saved_kernels`),
not through prunectl.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest
from conftest import run, seeded_keras

DEAD = ("--neuron-criterion", "l1", "--neuron-threshold", "1e-12")


def saved_kernels(path) -> dict[str, np.ndarray]:
    """Every 2-D-or-more weight of a saved model by its dataset path (nested models' folders included)."""
    found: dict[str, np.ndarray] = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.ndim >= 2:
            found[name] = obj[()]

    if str(path).endswith(".keras"):
        with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as f:
            f.visititems(visit)
    else:
        with h5py.File(path, "r") as f:
            f["model_weights"].visititems(visit)
    return found


def kill(layer, units) -> None:
    """Make ``units`` of a Dense/Conv layer exactly dead: kernel slice and bias zero (a ReLU follows)."""
    kernel, bias = (w.copy() for w in layer.get_weights())
    kernel[..., list(units)] = 0.0
    bias[list(units)] = 0.0
    layer.set_weights([kernel, bias])


def nested_model():
    """``dense -> enc(dense -> deep(dense) -> dense_1) -> head``: names repeat at every depth."""
    keras = seeded_keras()
    relu = "relu"
    deep = keras.Sequential([keras.Input((10,)), keras.layers.Dense(6, activation=relu, name="dense")], name="deep")
    inner_in = keras.Input((8,))
    hidden = keras.layers.Dense(10, activation=relu, name="dense")(inner_in)
    enc = keras.Model(inner_in, keras.layers.Dense(7, activation=relu, name="dense_1")(deep(hidden)), name="enc")
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation=relu, name="dense")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(enc(x)))
    kill(model.get_layer("dense"), [1, 5])
    kill(enc.get_layer("dense"), [0, 3, 9])
    kill(deep.get_layer("dense"), [2])
    kill(enc.get_layer("dense_1"), [4, 6])
    return model


# Units kept: outer dense 8-2, enc/dense 10-3, enc/deep/dense 6-1, enc/dense_1 7-2.
PRUNED_SHAPES = sorted([(6, 6), (6, 7), (7, 5), (5, 5), (5, 3)])


def _inputs(model, n=16, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *model.input_shape[1:])).astype("float32")


@pytest.mark.parametrize("fmt", [".keras", ".h5"])
def test_dead_units_inside_nested_models_are_removed_and_outputs_do_not_move(tmp_path, fmt):
    import keras

    model = nested_model()
    path, out = tmp_path / f"nested{fmt}", tmp_path / f"pruned{fmt}"
    model.save(path)
    run("prune", path, *DEAD, "-o", out, "-q")
    assert sorted(k.shape for k in saved_kernels(out).values()) == PRUNED_SHAPES
    pruned = keras.models.load_model(out)
    assert [layer.__class__.__name__ for layer in pruned.get_layer("enc").layers][-2:] == ["Sequential", "Dense"]
    x = _inputs(model)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_plan_rows_name_inner_layers_by_path(tmp_path):
    path = tmp_path / "nested.keras"
    nested_model().save(path)
    plan = json.loads(run("prune", path, *DEAD, "--dry-run", "--json", "-q").stdout)["structural"]
    rows = {row["layer"]: (row["units_before"], row["units_after"]) for row in plan["layers"]}
    assert rows == {
        "dense": (8, 6),
        "enc/dense": (10, 7),
        "enc/deep/dense": (6, 5),
        "enc/dense_1": (7, 5),
        "head": (3, 3),
    }
    dropped = {tuple(g["producers"]): g["dropped"] for g in plan["groups"]}
    assert dropped[("enc/dense",)] == [0, 3, 9] and dropped[("enc/deep/dense",)] == [2]


@pytest.mark.parametrize("fmt", [".keras", ".h5"])
@pytest.mark.parametrize("engine", ["file", "keras"])
def test_weight_pruning_reaches_kernels_inside_nested_models(tmp_path, fmt, engine):
    path, out = tmp_path / f"nested{fmt}", tmp_path / f"pruned{fmt}"
    nested_model().save(path)
    run("prune", path, "--sparsity", "0.5", "--engine", engine, "-o", out, "-q")
    kernels = saved_kernels(out)
    assert len(kernels) == 5
    for name, value in kernels.items():
        # Dead columns are zero already; the smallest of the rest go until half are zero.
        assert abs(np.mean(value == 0) - 0.5) < 0.05, name


def siamese_model():
    """One encoder model applied to two inputs, then Subtract and Concatenate -> Dense."""
    keras = seeded_keras()
    enc_in = keras.Input((5,))
    hidden = keras.layers.Dense(9, activation="relu", name="dense")(enc_in)
    encoder = keras.Model(enc_in, keras.layers.Dense(6, activation="relu", name="embed")(hidden), name="encoder")
    a, b = keras.Input((5,), name="a"), keras.Input((5,), name="b")
    ea, eb = encoder(a), encoder(b)
    merged = keras.layers.Concatenate()([keras.layers.Subtract()([ea, eb]), ea])
    model = keras.Model([a, b], keras.layers.Dense(1, name="score")(merged))
    kill(encoder.get_layer("dense"), [2, 7])
    kill(encoder.get_layer("embed"), [0, 4])
    return model


def test_siamese_encoder_is_pruned_once_for_both_inputs(tmp_path):
    import keras

    model = siamese_model()
    path, out = tmp_path / "siamese.keras", tmp_path / "pruned.keras"
    model.save(path)
    plan = json.loads(run("prune", path, *DEAD, "--dry-run", "--json", "-q").stdout)["structural"]
    rows = {row["layer"]: (row["units_before"], row["units_after"]) for row in plan["layers"]}
    assert rows["encoder/dense"] == (9, 7) and rows["encoder/embed"] == (6, 4)
    run("prune", path, *DEAD, "-o", out, "-q")
    # One encoder's weights (stored once), the score Dense reading 2 x 4 features.
    assert sorted(k.shape for k in saved_kernels(out).values()) == [(5, 7), (7, 4), (8, 1)]
    pruned = keras.models.load_model(out)
    x = [np.random.default_rng(seed).normal(size=(16, 5)).astype("float32") for seed in (1, 2)]
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_activation_criterion_reads_activations_inside_nested_models(tmp_path):
    path, data = tmp_path / "nested.keras", tmp_path / "data.npz"
    model = nested_model()
    model.save(path)
    x = _inputs(model, 32)
    np.savez(data, x=x, y=np.zeros((len(x), 3), "float32"))
    plan = json.loads(
        run(
            "prune",
            path,
            "--neuron-criterion",
            "activation",
            "--neuron-ratio",
            "0.25",
            "--data",
            data,
            "--dry-run",
            "--json",
            "-q",
        ).stdout
    )["structural"]
    dropped = {tuple(g["producers"]): set(g["dropped"]) for g in plan["groups"]}
    # A dead unit is zero on every sample: the lowest activation, dropped first.
    assert dropped[("enc/deep/dense",)] == {2}
    assert len(dropped[("enc/dense",)]) == 2 and dropped[("enc/dense",)] <= {0, 3, 9}


@pytest.mark.slow
def test_pruned_nested_model_reloads_in_a_fresh_process(tmp_path):
    model = nested_model()
    path, out, x = tmp_path / "nested.keras", tmp_path / "pruned.keras", tmp_path / "x.npy"
    model.save(path)
    np.save(x, _inputs(model))
    run("prune", path, *DEAD, "-o", out, "-q")
    code = (
        "import sys, numpy as np, keras; m = keras.models.load_model(sys.argv[1]); "
        "np.save(sys.argv[3], m.predict(np.load(sys.argv[2]), verbose=0))"
    )
    subprocess.run([sys.executable, "-c", code, str(out), str(x), str(tmp_path / "y.npy")], check=True)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model.predict(np.load(x), verbose=0), atol=1e-5)


@pytest.mark.slow
def test_mobilenetv2_nested_in_a_classifier_is_pruned_inside_like_the_bare_model(tmp_path):
    keras = seeded_keras()
    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None)
    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(base(inputs))
    wrapped = keras.Model(inputs, keras.layers.Dense(10, name="classifier")(pooled))
    bare = keras.Model(
        base.inputs, keras.layers.Dense(10, name="classifier")(keras.layers.GlobalAveragePooling2D()(base.outputs[0]))
    )
    path, bare_path, out = tmp_path / "wrapped.keras", tmp_path / "bare.keras", tmp_path / "pruned.keras"
    wrapped.save(path)
    bare.save(bare_path)
    totals = {}
    for name, source in (("wrapped", path), ("bare", bare_path)):
        report = json.loads(run("prune", source, "--neuron-ratio", "0.5", "--dry-run", "--json", "-q").stdout)
        totals[name] = report["structural"]["totals"]["params"]
    assert totals["wrapped"]["before"] == totals["bare"]["before"]
    assert totals["wrapped"]["after"] == pytest.approx(totals["bare"]["after"], rel=0.01)
    run("prune", path, "--neuron-ratio", "0.5", "-o", out, "-q")
    pruned = keras.models.load_model(out)
    assert pruned.get_layer(base.name).__class__.__name__ == "Functional"
    kernels_before = sum(k.size for k in saved_kernels(path).values())
    assert sum(k.size for k in saved_kernels(out).values()) < 0.7 * kernels_before
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    assert pruned.predict(x, verbose=0).shape == (2, 10)


def test_normalization_inside_a_nested_model_is_measured_like_the_bare_one():
    from prunectl.core.structure.plan import NeuronPruning, plan_structure

    keras = seeded_keras()
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, name="d1")(inputs)
    block = keras.Model(inputs, keras.layers.Dense(2, name="d2")(keras.layers.LayerNormalization(name="norm")(hidden)))
    outer_in = keras.Input((4,))
    wrapped = keras.Model(outer_in, block(outer_in))
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    step = NeuronPruning(ratio=0.25, norms="joint")
    (bare,) = plan_structure(block, step, x).notes
    (inner,) = plan_structure(wrapped, step, x).notes
    assert inner["layer"] == f"{block.name}/norm" and bare["layer"] == "norm"
    assert inner["max_abs_change"] == pytest.approx(bare["max_abs_change"], rel=1e-5) and bare["max_abs_change"] > 0


def test_layer_graph_gives_nested_calls_by_path_with_the_outer_tensors():
    from prunectl.core.structure.keras_graph import layer_graph

    model = nested_model()
    graph = layer_graph(model)
    paths = [call.path for call in graph.calls if call.layer.__class__.__name__ != "InputLayer"]
    assert paths == ["dense", "enc/dense", "enc/deep/dense", "enc/dense_1", "head"]
    by_path = {call.path: call for call in graph.calls}
    # The nested model's input is the outer dense's output; its output is what head reads.
    assert by_path["enc/dense"].inputs[0] is by_path["dense"].outputs[0]
    assert by_path["head"].inputs[0] is by_path["enc/dense_1"].outputs[0]
    assert [path for path, _, _ in graph.nested] == ["enc", "enc/deep"]
