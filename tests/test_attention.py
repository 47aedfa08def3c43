"""Structural pruning of transformers built from stock Keras layers: attention heads, FFN units, the residual stream.

Heads and units are made exactly dead by hand (a head's value kernel and bias slice
zeroed, or its output kernel slice; an FFN unit's kernel column and bias zeroed), so
removing them must leave the outputs unchanged; the saved config is read with
zipfile/json and the saved weights with h5py, not with prunectl.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

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
    if where == "value":
        weights[4][:, heads] = 0
        weights[5][heads] = 0
    else:
        weights[6][heads] = 0
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
    assert rows["b0_mha"].flops_after < rows["b0_mha"].flops_before
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
