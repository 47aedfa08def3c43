"""Structural pruning of transformers built from stock Keras layers: attention heads, FFN units, the residual stream.

Heads and units are made exactly dead by hand (a head's value kernel and bias slice
zeroed, or its output kernel slice; an FFN unit's kernel column and bias zeroed), so
removing them must leave the outputs unchanged; the saved config is read with
zipfile/json and the saved weights with h5py, not with prunectl.
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
from conftest import run
from test_cli_errors import fails

from prunectl.core.structure.plan import NeuronPruning, apply_plan, plan_structure

VOCAB, LENGTH, WIDTH, HEADS, KEY_DIM, FF = 40, 6, 16, 4, 4, 12
X = np.random.default_rng(0).integers(0, VOCAB, size=(16, LENGTH)).astype("int32")


def _block(x, name: str):
    """The keras.io text-classification transformer block, from stock layers."""
    import keras

    attention = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, name=f"{name}_mha")(x, x)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln1")(
        keras.layers.Add(name=f"{name}_add1")([x, keras.layers.Dropout(0.1)(attention)])
    )
    ffn = keras.layers.Dense(FF, activation="relu", name=f"{name}_ff1")(x)
    ffn = keras.layers.Dense(WIDTH, name=f"{name}_ff2")(ffn)
    return keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln2")(
        keras.layers.Add(name=f"{name}_add2")([x, keras.layers.Dropout(0.1)(ffn)])
    )


def transformer(blocks: int = 2, positions: bool = True):
    """Token (+ position) Embedding -> ``blocks`` transformer blocks -> GlobalAveragePooling1D -> Dense(3)."""
    import keras

    keras.utils.set_random_seed(0)
    tokens = keras.Input((LENGTH,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCAB, WIDTH, name="tok")(tokens)
    if positions:
        # Stock-layer position embedding: a second Embedding over a constant index row, broadcast over the batch.
        x = keras.layers.Add(name="embed")([x, keras.layers.Embedding(LENGTH, WIDTH, name="pos")(tokens * 0)])
    for b in range(blocks):
        x = _block(x, f"b{b}")
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(tokens, keras.layers.Dense(3, name="head")(x))


def kill_heads(model, layer: str, heads, where: str = "value"):
    """Make ``heads`` of ``layer`` contribute exactly nothing: zero their value projection or output kernel slice."""
    mha = model.get_layer(layer)
    weights = mha.get_weights()  # q kernel, q bias, k kernel, k bias, v kernel, v bias, o kernel, o bias
    if where in ("value", "all"):
        weights[4][:, heads] = 0
        weights[5][heads] = 0
    if where in ("output", "all"):
        weights[6][heads] = 0
    if where == "all":  # every weight of the head, so that its norm is zero too
        for kernel, bias in ((0, 1), (2, 3)):
            weights[kernel][:, heads] = 0
            weights[bias][heads] = 0
    mha.set_weights(weights)


def kill_units(model, layer: str, units):
    dense = model.get_layer(layer)
    kernel, bias = dense.get_weights()
    kernel[:, units] = 0
    bias[units] = 0
    dense.set_weights([kernel, bias])


def saved_config(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    return {layer["config"]["name"]: layer["config"] for layer in config["config"]["layers"]}


def group_of(plan, layer: str, inner: str | None = "heads"):
    return next(g for g in plan.groups if layer in g.producers and g.inner == inner)


@pytest.mark.parametrize("where", ["value", "output"])
def test_dead_heads_are_the_ones_removed_and_outputs_do_not_move(where):
    model = transformer()
    kill_heads(model, "b0_mha", [1, 3], where)
    kill_heads(model, "b1_mha", [0, 2], where)
    before = model.predict(X, verbose=0)
    plan = plan_structure(model, NeuronPruning(ratio=0.5, include=("mha",)))
    assert group_of(plan, "b0_mha").dropped == (1, 3)
    assert group_of(plan, "b1_mha").dropped == (0, 2)
    pruned = apply_plan(model, plan)
    assert pruned.get_layer("b0_mha").get_config()["num_heads"] == 2
    np.testing.assert_allclose(pruned.predict(X, verbose=0), before, atol=1e-5)


def test_heads_and_ffn_units_are_pruned_while_the_residual_stream_stays_whole():
    model = transformer()
    kill_heads(model, "b0_mha", [2])
    kill_heads(model, "b1_mha", [0], "output")
    kill_units(model, "b0_ff1", [0, 5, 7])
    kill_units(model, "b1_ff1", [1, 2, 11])
    before = model.predict(X, verbose=0)
    plan = plan_structure(model, NeuronPruning(ratio=0.25))
    assert group_of(plan, "b0_mha").dropped == (2,)
    assert group_of(plan, "b1_mha").dropped == (0,)
    assert group_of(plan, "b0_ff1", None).dropped == (0, 5, 7)
    assert group_of(plan, "b1_ff1", None).dropped == (1, 2, 11)
    # The residual stream (embeddings, attention and FFN outputs) is left whole without --prune-residual.
    for name in ("b0_ff2", "b1_ff2"):
        assert group_of(plan, name, None).frozen
    rows = {r.layer: r for r in plan.layers}
    assert rows["b0_mha"].inner == (("heads", 4, 3),)
    assert rows["b0_mha"].params_after < rows["b0_mha"].params_before

    # Multiply-adds by hand: four projections per position, then scores and context over heads * key_dim.
    def attention_macs(heads):
        return LENGTH * 4 * WIDTH * heads * KEY_DIM + 2 * LENGTH * LENGTH * heads * KEY_DIM

    assert (rows["b0_mha"].flops_before, rows["b0_mha"].flops_after) == (attention_macs(4), attention_macs(3))
    np.testing.assert_allclose(apply_plan(model, plan).predict(X, verbose=0), before, atol=1e-5)


def test_excluded_attention_keeps_its_heads():
    model = transformer()
    plan = plan_structure(model, NeuronPruning(ratio=0.5, exclude=("b1_mha",)))
    assert group_of(plan, "b1_mha").frozen == "b1_mha is not selected"
    assert group_of(plan, "b0_mha").units_after == 2


def test_one_head_is_never_removed():
    import keras

    inputs = keras.Input((LENGTH, WIDTH))
    attention = keras.layers.MultiHeadAttention(1, KEY_DIM, name="mha")(inputs, inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(8, name="mid")(attention)))
    plan = plan_structure(model, NeuronPruning(ratio=0.5))
    assert group_of(plan, "mha").frozen == "mha heads: one of heads"


def saved_mha_kernels(path, layer: str) -> dict[str, tuple]:
    """Shapes of a saved MultiHeadAttention's projection kernels, read from the .keras file with h5py."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read("model.weights.h5")
    with h5py.File(io.BytesIO(data), "r") as weights:
        folder = next(g for g in weights["layers"].values() if g["vars"].attrs.get("name") == layer)
        return {sub: folder[sub]["vars"]["0"].shape for sub in ("query_dense", "value_dense", "output_dense")}


def test_a_head_scaled_up_scores_highest_on_data():
    model = transformer(blocks=1)
    mha = model.get_layer("b0_mha")
    weights = mha.get_weights()
    weights[6][2] *= 1000  # head 2's output kernel slice: its contribution is 1000 times larger
    mha.set_weights(weights)
    plan = plan_structure(model, NeuronPruning(criterion="activation", ratio=0.75, include=("mha",)), X)
    assert group_of(plan, "b0_mha").dropped == (0, 1, 3)


def test_dead_heads_score_zero_on_data_and_go():
    model = transformer(blocks=1)
    kill_heads(model, "b0_mha", [0, 3])
    before = model.predict(X, verbose=0)
    plan = plan_structure(model, NeuronPruning(criterion="activation", ratio=0.5, include=("mha",)), X)
    assert group_of(plan, "b0_mha").dropped == (0, 3)
    np.testing.assert_allclose(apply_plan(model, plan).predict(X, verbose=0), before, atol=1e-5)


def test_global_scope_ranks_heads_across_layers_and_round_to_applies():
    model = transformer()
    kill_heads(model, "b0_mha", [0, 1, 2], "all")
    before = model.predict(X, verbose=0)
    step = NeuronPruning(ratio=3 / 8, scope="global", include=("mha",))
    plan = plan_structure(model, step)
    assert group_of(plan, "b0_mha").dropped == (0, 1, 2)
    assert group_of(plan, "b1_mha").dropped == ()
    np.testing.assert_allclose(apply_plan(model, plan).predict(X, verbose=0), before, atol=1e-5)
    rounded = plan_structure(model, NeuronPruning(ratio=3 / 8, scope="global", include=("mha",), round_to=2))
    assert group_of(rounded, "b0_mha").units_after == 2
    assert group_of(rounded, "b1_mha").units_after == 4


def test_dry_run_shows_heads(tmp_path):
    model = transformer()
    kill_heads(model, "b0_mha", [1, 3])
    path = tmp_path / "t.keras"
    model.save(path)
    result = run("prune", path, "--neuron-ratio", "0.5", "--include", "mha", "--dry-run")
    assert "heads 4 -> 2" in result.stderr
    assert "Dry run: no model or report written." in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.keras"]


def test_saved_model_has_fewer_heads(tmp_path):
    model = transformer()
    kill_heads(model, "b0_mha", [1, 3])
    kill_heads(model, "b1_mha", [0, 1])
    path, out = tmp_path / "t.keras", tmp_path / "out.keras"
    model.save(path)
    run("prune", path, "--neuron-ratio", "0.5", "--include", "mha", "-o", out)
    config = saved_config(out)
    assert config["b0_mha"]["num_heads"] == 2 and config["b1_mha"]["num_heads"] == 2
    assert saved_mha_kernels(out, "b0_mha") == {
        "query_dense": (WIDTH, 2, KEY_DIM),
        "value_dense": (WIDTH, 2, KEY_DIM),
        "output_dense": (2, KEY_DIM, WIDTH),
    }
    # The input file is left as it was.
    assert saved_config(path)["b0_mha"]["num_heads"] == HEADS


@pytest.mark.slow
def test_pruned_attention_reloads_in_a_fresh_keras(tmp_path):
    model = transformer()
    kill_heads(model, "b0_mha", [1, 3])
    kill_heads(model, "b1_mha", [0, 1])
    path, out = tmp_path / "t.keras", tmp_path / "out.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", model.predict(X, verbose=0))
    run("prune", path, "--neuron-ratio", "0.5", "--include", "mha", "-o", out)
    script = (
        "import numpy as np, keras, sys; m = keras.saving.load_model(sys.argv[1]); "
        "x = np.load(sys.argv[2]); y = np.load(sys.argv[3]); "
        "print(m.get_layer('b0_mha').num_heads, float(np.abs(m.predict(x, verbose=0) - y).max()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(out), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True,
        text=True,
        check=True,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
    )
    heads, change = done.stdout.split()[-2:]
    assert heads == "2" and float(change) < 1e-5


def kill_residual(model, channels):
    """Zero residual channels where every producer of the stream writes them (l1 scores them 0)."""
    for name in ("tok", "pos"):
        (table,) = model.get_layer(name).get_weights()
        table[:, channels] = 0
        model.get_layer(name).set_weights([table])
    for name in ("b0_ff2", "b1_ff2"):
        kernel, bias = model.get_layer(name).get_weights()
        kernel[:, channels] = 0
        bias[channels] = 0
        model.get_layer(name).set_weights([kernel, bias])


def test_prune_residual_removes_stream_channels_coupled_across_blocks(tmp_path):
    model = transformer()
    kill_residual(model, [3, 7])
    path, out = tmp_path / "t.keras", tmp_path / "out.keras"
    model.save(path)
    plan = plan_structure(model, NeuronPruning(ratio=2 / WIDTH, prune_residual=True, exclude=("ff1", "mha")))
    stream = next(g for g in plan.groups if "tok" in g.producers)
    assert set(stream.producers) == {"tok", "pos", "b0_ff2", "b1_ff2"}
    assert stream.dropped == (3, 7)
    assert {n["layer"] for n in plan.notes} == {"b0_ln1", "b0_ln2", "b1_ln1", "b1_ln2"}
    assert all(g.frozen for g in plan.groups if g.inner)  # not selected: only the stream is pruned here
    run(
        "prune",
        path,
        "--neuron-ratio",
        str(2 / WIDTH),
        "--prune-residual",
        "--exclude",
        "ff1",
        "--exclude",
        "mha",
        "-o",
        out,
    )
    with zipfile.ZipFile(out) as archive:
        layers = json.loads(archive.read("config.json"))["config"]["layers"]
    for layer in layers:
        if layer["class_name"] == "Add":
            shapes = [t["config"]["shape"] for t in layer["inbound_nodes"][0]["args"][0]]
            assert [s[-1] for s in shapes] == [WIDTH - 2] * len(shapes), layer["name"]
    config = {layer["name"]: layer["config"] for layer in layers}
    assert config["tok"]["output_dim"] == WIDTH - 2 and config["pos"]["output_dim"] == WIDTH - 2
    assert saved_mha_kernels(out, "b1_mha")["output_dense"] == (HEADS, KEY_DIM, WIDTH - 2)
    import keras

    pruned = keras.saving.load_model(out)
    assert pruned.predict(X, verbose=0).shape == (len(X), 3)


def test_without_prune_residual_the_stream_is_left_whole():
    plan = plan_structure(transformer(), NeuronPruning(ratio=0.5))
    rows = {r.layer: r for r in plan.layers}
    assert rows["tok"].params_after == rows["tok"].params_before
    assert ("tok", "Embedding", "on the residual stream (pruned with --prune-residual)") in plan.boundaries
    assert (
        "b0_mha",
        "MultiHeadAttention",
        "on the residual stream (pruned with --prune-residual); its channels are left whole, pruned inside it: heads",
    ) in plan.boundaries


def test_cross_attention_freezes_its_inputs():
    import keras

    query, context = keras.Input((LENGTH, WIDTH)), keras.Input((LENGTH, 8))
    q = keras.layers.Dense(WIDTH, name="q")(query)
    c = keras.layers.Dense(8, name="c")(context)
    attention = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, name="mha")(q, c)
    model = keras.Model([query, context], keras.layers.Dense(2)(attention))
    plan = plan_structure(model, NeuronPruning(ratio=0.5, prune_residual=True))
    assert group_of(plan, "q", None).frozen and group_of(plan, "c", None).frozen
    assert group_of(plan, "mha").units_after == 2


@pytest.mark.parametrize(
    "args, line",
    [
        (
            ("--neuron-ratio", "0.5", "--prune-residual", "--norms", "boundary"),
            "Error: --prune-residual prunes through the normalizations on the residual stream, so it needs "
            "--norms joint (its default). Received: --norms boundary",
        ),
        (
            ("--prune-residual",),
            "Error: --prune-residual needs --neuron-threshold or --neuron-ratio. Received: --prune-residual",
        ),
    ],
    ids=["boundary-norms", "no-structural-step"],
)
def test_prune_residual_errors(tmp_path, args, line):
    path = tmp_path / "t.keras"
    transformer(blocks=1).save(path)
    fails(tmp_path, "prune", path, *args, code=2, line=line)
