"""Structural pruning on graphs holding keras ops, keras.applications helper layers and odd layers.

Pruned models are checked against computations made by hand from the original
weights (slicing the kept units with numpy), never against prunectl's own code.
"""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
from conftest import run, seeded_keras
from independent import kernel

from prunectl.core.layers import LayerSpec, Rule, op_key, register_layer, specs
from prunectl.core.structure.plan import NeuronPruning, apply_plan, plan_structure

HALF = NeuronPruning(ratio=0.5)


def _dense(model, name):
    layer = model.get_layer(name)
    return layer.kernel.numpy().astype(np.float64), layer.bias.numpy().astype(np.float64)


def _kept(plan, producer: str) -> np.ndarray:
    (group,) = [g for g in plan.groups if producer in g.producers]
    return np.setdiff1d(np.arange(group.units_before), group.dropped)


def _x(shape, n=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


def _op_model():
    keras = seeded_keras()
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(6, name="a")(inputs)
    hidden = hidden + 1.0
    return keras.Model(inputs, keras.layers.Dense(3, name="b")(hidden))


def test_scalar_op_passes_channels_and_the_pruned_model_matches_hand_slicing():
    model = _op_model()
    plan = plan_structure(model, HALF)
    pruned = apply_plan(model, plan)
    keep = _kept(plan, "a")
    assert len(keep) == 3 and plan.boundaries == ()
    (wa, ba), (wb, bb) = _dense(model, "a"), _dense(model, "b")
    x = _x((8,))
    expected = ((x @ wa[:, keep] + ba[keep]) + 1.0) @ wb[keep] + bb
    np.testing.assert_allclose(np.asarray(pruned(x)), expected, atol=1e-5)
    assert pruned.count_params() == plan.totals()["params"]["after"] == 8 * 3 + 3 + 3 * 3 + 3


def test_scalar_op_model_prunes_through_the_cli_and_dry_run(tmp_path):
    path = tmp_path / "op.keras"
    _op_model().save(path)
    plan = json.loads(run("prune", path, "--neuron-ratio", "0.5", "--dry-run", "--json", "-q").stdout)
    assert plan["structural"]["totals"]["params"]["after"] == 8 * 3 + 3 + 3 * 3 + 3
    run("prune", path, "--neuron-ratio", "0.5", "-o", tmp_path / "out.keras", "-q")
    assert kernel(tmp_path / "out.keras", "a").shape == (8, 3)
    assert kernel(tmp_path / "out.keras", "b").shape == (3, 3)


def test_product_of_two_branches_couples_them():
    keras = seeded_keras()
    inputs = keras.Input((5,))
    left = keras.layers.Dense(6, name="left")(inputs)
    right = keras.layers.Dense(6, name="right")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(left * right))
    plan = plan_structure(model, HALF)
    (group,) = [g for g in plan.groups if "left" in g.producers]
    assert sorted(group.producers) == ["left", "right"] and len(group.dropped) == 3
    keep = _kept(plan, "left")
    (wl, bl), (wr, br), (wh, bh) = (_dense(model, n) for n in ("left", "right", "head"))
    x = _x((5,))
    expected = ((x @ wl[:, keep] + bl[keep]) * (x @ wr[:, keep] + br[keep])) @ wh[keep] + bh
    np.testing.assert_allclose(np.asarray(apply_plan(model, plan)(x)), expected, atol=1e-5)


def _chain(middle):
    """Input -> Dense(8) -> Dense(6, "mid") -> middle -> Dense(4) -> Dense(3): the outer Dense layers stay prunable."""
    keras = seeded_keras()
    inputs = keras.Input((5, 7))
    hidden = keras.layers.Dense(6, name="mid")(keras.layers.Dense(8, name="first")(inputs))
    hidden = keras.layers.Dense(4, name="after")(middle(keras, hidden))
    return keras.Model(inputs, keras.layers.Dense(3, name="last")(hidden))


def test_per_channel_constant_is_a_boundary_with_its_reason():
    model = _chain(lambda keras, x: x + np.arange(6, dtype="float32"))
    plan = plan_structure(model, HALF)
    ((name, class_name, reason),) = plan.boundaries
    assert class_name == "ops.Add" and "constant argument of shape (6,)" in reason
    frozen = {g.producers[0]: g.frozen for g in plan.groups}
    assert frozen["mid"] and name in frozen["mid"] and frozen["first"] is None
    pruned = apply_plan(model, plan)
    assert pruned.get_layer("mid").kernel.shape == (4, 6)
    assert pruned(_x((5, 7))).shape == (5, 5, 3)


@pytest.mark.parametrize(
    ("op", "class_name"),
    [
        (lambda keras, x: keras.ops.transpose(x, (0, 2, 1)), "ops.Transpose"),
        (lambda keras, x: keras.ops.reshape(x, (-1, 6, 5)), "ops.Reshape"),
        (lambda keras, x: keras.ops.mean(x, axis=1, keepdims=True), "ops.Mean"),
        (lambda keras, x: keras.ops.softmax(x), "ops.Softmax"),
    ],
    ids=["transpose", "reshape", "mean", "softmax"],
)
def test_unknown_op_is_a_boundary_and_the_rest_still_prunes(op, class_name):
    model = _chain(op)
    plan = plan_structure(model, HALF)
    assert [(c, r) for _, c, r in plan.boundaries] == [(class_name, f"no rule for operation {class_name}")]
    pruned = apply_plan(model, plan)
    assert pruned.get_layer("first").kernel.shape == (7, 4)
    assert pruned.get_layer("mid").kernel.shape == (4, 6)
    assert pruned.count_params() == plan.totals()["params"]["after"]
    x = _x((5, 7))
    assert pruned(x).shape == model(x).shape


def test_a_registered_op_rule_replaces_the_boundary():
    model = _chain(lambda keras, x: keras.ops.floor(x))
    assert plan_structure(model, HALF).boundaries[0][2] == "no rule for operation ops.Floor"
    key = op_key("Floor")
    assert key not in specs()
    register_layer(key, LayerSpec(rule=Rule("passthrough")))
    try:
        plan = plan_structure(model, HALF)
    finally:
        from prunectl.core.layers import spec

        del spec._TABLE[key]
    assert plan.boundaries == ()
    assert apply_plan(model, plan).get_layer("mid").kernel.shape == (4, 3)


def test_op_rules_name_real_keras_ops_and_never_a_layer_rule():
    modules = [importlib.import_module(f"keras.src.ops.{m}") for m in ("numpy", "nn", "core", "math")]
    ops = [name for name in specs() if name.startswith("ops.")]
    assert "ops.Add" in ops and "ops.Relu" in ops
    for name in ops:
        assert any(isinstance(getattr(m, name[4:], None), type) for m in modules), name
    # The op Add is not the layer Add: a graph op never takes a layer's rule (and the reverse).
    assert specs()["ops.Add"] is not specs()["Add"]


def test_layer_scale_and_stochastic_depth_slice_gamma_exactly():
    from keras.src.applications.convnext import LayerScale, StochasticDepth

    keras = seeded_keras()
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(6, name="a")(inputs)
    scale = LayerScale(0.5, 6, name="scale")
    hidden = StochasticDepth(0.1, name="drop")(scale(hidden))
    model = keras.Model(inputs, keras.layers.Dense(2, name="b")(hidden))
    gamma = np.linspace(0.1, 1.2, 6).astype("float32")
    scale.set_weights([gamma])
    plan = plan_structure(model, HALF)
    keep = _kept(plan, "a")
    assert plan.boundaries == () and len(keep) == 3
    (wa, ba), (wb, bb) = _dense(model, "a"), _dense(model, "b")
    x = _x((5,))
    expected = ((x @ wa[:, keep] + ba[keep]) * gamma[keep]) @ wb[keep] + bb
    pruned = apply_plan(model, plan)
    np.testing.assert_allclose(np.asarray(pruned(x)), expected, atol=1e-5)
    assert pruned.count_params() == plan.totals()["params"]["after"]


def test_custom_scale_layer_couples_its_inputs():
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    keras = seeded_keras()
    inputs = keras.Input((5,))
    left = keras.layers.Dense(6, name="left")(inputs)
    right = keras.layers.Dense(6, name="right")(inputs)
    merged = CustomScaleLayer(0.3, name="merge")([left, right])
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(merged))
    plan = plan_structure(model, HALF)
    assert plan.boundaries == ()
    keep = _kept(plan, "left")
    assert np.array_equal(keep, _kept(plan, "right"))
    (wl, bl), (wr, br), (wh, bh) = (_dense(model, n) for n in ("left", "right", "head"))
    x = _x((5,))
    expected = ((x @ wl[:, keep] + bl[keep]) + 0.3 * (x @ wr[:, keep] + br[keep])) @ wh[keep] + bh
    np.testing.assert_allclose(np.asarray(apply_plan(model, plan)(x)), expected, atol=1e-5)


def _conv_bn_model():
    keras = seeded_keras()
    inputs = keras.Input((9, 9, 3))
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    for bn in ("bn1", "bn2"):  # moving statistics away from 0/1, so a slip in slicing shows
        layer = model.get_layer(bn)
        rng = np.random.default_rng(len(bn))
        layer.set_weights([rng.uniform(0.5, 2, 8), rng.normal(size=8), rng.normal(size=8), rng.uniform(0.5, 2, 8)])
    return model


@pytest.mark.parametrize("criterion", ["activation", "apoz"])
def test_bias_free_conv_with_inputs_and_outputs_pruned_gets_the_folded_bias(criterion):
    keras = seeded_keras()
    model = _conv_bn_model()
    x = _x((9, 9, 3), n=16)
    plan = plan_structure(model, NeuronPruning(criterion=criterion, ratio=0.5), x)
    pruned = apply_plan(model, plan)
    kept_in, kept_out = _kept(plan, "conv1"), _kept(plan, "conv2")
    assert len(kept_in) == len(kept_out) == 4
    dropped_in = np.setdiff1d(np.arange(8), kept_in)
    # A removed input channel's mean activation, times every kernel tap, moves into conv2's bias.
    relu = np.asarray(keras.Model(model.input, model.get_layer("relu").output)(x), dtype=np.float64)
    mean = relu.mean(axis=(0, 1, 2))
    k2 = model.get_layer("conv2").kernel.numpy().astype(np.float64)
    expected_bias = np.einsum("c,hwco->o", mean[dropped_in], k2[:, :, dropped_in, :])[kept_out]
    conv2 = pruned.get_layer("conv2")
    assert conv2.kernel.shape == (3, 3, 4, 4)
    np.testing.assert_allclose(conv2.bias.numpy(), expected_bias, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(conv2.kernel.numpy(), k2[:, :, kept_in][..., kept_out].astype("float32"))
    bn2 = [w.numpy() for w in model.get_layer("bn2").weights]
    for new, old in zip(pruned.get_layer("bn2").weights, bn2):
        np.testing.assert_array_equal(new.numpy(), old[kept_out])
    assert pruned.count_params() == plan.totals()["params"]["after"]


def _nested():
    keras = seeded_keras()
    inner = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8), keras.layers.Dense(8)], name="inner")
    inputs = keras.Input((5,))
    x = keras.layers.Dense(8, name="d1")(keras.layers.Dense(8, name="d0")(inputs))
    x = keras.layers.Dense(8, name="d2")(inner(x))
    return keras.Model(inputs, keras.layers.Dense(3, name="d3")(x))


def _attention():
    keras = seeded_keras()
    inputs = keras.Input((4, 6))
    x = keras.layers.Dense(6, name="d0")(keras.layers.Dense(8, name="pre")(inputs))
    x = keras.layers.MultiHeadAttention(2, 4, name="mha")(x, x)
    return keras.Model(inputs, keras.layers.Dense(3, name="d2")(keras.layers.Dense(5, name="d1")(x)))


def _bidirectional():
    keras = seeded_keras()
    inputs = keras.Input((4, 6))
    x = keras.layers.Dense(6, name="d0")(keras.layers.Dense(8, name="pre")(inputs))
    x = keras.layers.Bidirectional(keras.layers.LSTM(4), name="bi")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="d2")(keras.layers.Dense(5, name="d1")(x)))


@pytest.mark.parametrize("build", [_nested, _attention, _bidirectional], ids=["nested", "mha", "bidirectional"])
def test_param_counts_cover_every_variable(build):
    model = build()
    plan = plan_structure(model, HALF)
    assert sum(row.params_before for row in plan.layers) == model.count_params()
    pruned = apply_plan(model, plan)
    assert sum(row.params_after for row in plan.layers) == pruned.count_params() < model.count_params()
    x = _x(model.input_shape[1:])
    assert pruned(x).shape == model(x).shape


def test_lambda_model_prunes_with_unsafe_through_the_cli(tmp_path):
    keras = seeded_keras()
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, name="d1")(keras.layers.Dense(8, name="d0")(inputs))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="d3")(keras.layers.Dense(8, name="d2")(x)))
    path, out = tmp_path / "lambda.keras", tmp_path / "out.keras"
    model.save(path)
    plan = json.loads(run("prune", path, "--unsafe", "--neuron-ratio", "0.5", "--dry-run", "--json", "-q").stdout)
    boundaries = plan["structural"]["boundaries"]
    assert [(b["layer"], b["class"]) for b in boundaries] == [("double", "Lambda")]
    run("prune", path, "--unsafe", "--neuron-ratio", "0.5", "-o", out, "-q")
    assert kernel(out, "d0").shape == (6, 4) and kernel(out, "d1").shape == (4, 8)
    assert kernel(out, "d2").shape == (8, 4) and kernel(out, "d3").shape == (4, 2)
    keep = {
        g["producers"][0]: np.setdiff1d(np.arange(g["units_before"]), g["dropped"])
        for g in plan["structural"]["groups"]
    }
    (w0, b0), (w1, b1), (w2, b2), (w3, b3) = (_dense(model, n) for n in ("d0", "d1", "d2", "d3"))
    k0, k2 = keep["d0"], keep["d2"]
    x = _x((6,))
    hidden = ((x @ w0[:, k0] + b0[k0]) @ w1[k0] + b1) * 2.0
    expected = (hidden @ w2[:, k2] + b2[k2]) @ w3[k2] + b3
    pruned = keras.models.load_model(out, safe_mode=False)
    np.testing.assert_allclose(np.asarray(pruned(x)), expected, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["MobileNetV3Small", "ConvNeXtTiny"])
def test_keras_applications_with_ops_plan_apply_and_run(name):
    keras = seeded_keras()
    model = getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), classes=10)
    plan = plan_structure(model, NeuronPruning(ratio=0.5, round_to=8))
    assert sum(row.params_before for row in plan.layers) == model.count_params()
    pruned = apply_plan(model, plan)
    assert pruned.count_params() == plan.totals()["params"]["after"] < model.count_params()
    assert not [b for b in plan.boundaries if b[1].startswith("ops.")]
    x = _x((32, 32, 3), n=2)
    assert np.isfinite(np.asarray(pruned(x))).all() and pruned(x).shape == (2, 10)


def test_rebuilds_of_a_lambda_model_need_unsafe():
    from prunectl.core.structure.fold import fold_batchnorm

    keras = seeded_keras()
    inputs = keras.Input((6,))
    x = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(8, name="d0")(inputs))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="d1")(keras.layers.Dense(8, name="dd")(x)))
    plan = plan_structure(model, HALF)
    for rebuild in (
        lambda unsafe: apply_plan(model, plan, unsafe=unsafe),
        lambda unsafe: fold_batchnorm(model, unsafe),
    ):
        with pytest.raises(ValueError, match="safe_mode"):
            rebuild(False)
        assert rebuild(True) is not None
    folded, pairs = fold_batchnorm(model, unsafe=True)
    x = _x((6,))
    assert pairs == {"bn": "d0"}
    np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(model(x)), atol=1e-5)


def test_layers_the_graph_cannot_reason_about_are_boundaries_never_errors():
    keras = seeded_keras()

    class Halves(keras.layers.Layer):  # two outputs
        def call(self, x):
            return x[..., :3], x[..., 3:]

    class NoConfig(keras.layers.Layer):
        def call(self, x):
            return x * 1.0

        def get_config(self):
            raise NotImplementedError("no config")

    class WrongRule(keras.layers.Dense):
        pass

    from prunectl.core.layers import spec

    register_layer("NoConfig", LayerSpec(rule=Rule("passthrough")))
    register_layer("WrongRule", LayerSpec(rule=Rule("producer", units="filters")))
    try:
        inputs = keras.Input((5,))
        x = keras.layers.Dense(6, name="d0")(keras.layers.Dense(8, name="pre")(inputs))
        left, right = Halves(name="halves")(x)
        x = WrongRule(4, name="wrong")(NoConfig(name="noconfig")(keras.layers.Concatenate()([left, right])))
        model = keras.Model(inputs, keras.layers.Dense(2, name="d1")(keras.layers.Dense(8, name="d2")(x)))
        plan = plan_structure(model, HALF)
    finally:
        del spec._TABLE["NoConfig"], spec._TABLE["WrongRule"]
    reasons = {name: reason for name, _, reason in plan.boundaries}
    assert reasons["halves"] == "no rule for class Halves"
    assert reasons["noconfig"] == "get_config() gives no config"
    assert reasons["wrong"].startswith("its rule does not apply (KeyError")
    assert {g.producers[0]: len(g.dropped) for g in plan.groups if not g.frozen} == {"pre": 4, "d2": 4}


@pytest.mark.slow
@pytest.mark.parametrize("criterion", ["activation", "apoz"])
@pytest.mark.parametrize("name", ["MobileNetV2", "EfficientNetB0"])
def test_data_criteria_on_conv_batchnorm_networks(name, criterion):
    """Conv(use_bias=False) -> BatchNorm -> activation everywhere: inputs and outputs of most convs are pruned."""
    keras = seeded_keras()
    model = getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), classes=10)
    x = _x((32, 32, 3), n=8)
    plan = plan_structure(model, NeuronPruning(criterion=criterion, ratio=0.5, round_to=8), x)
    pruned = apply_plan(model, plan)
    assert pruned.count_params() == plan.totals()["params"]["after"] < model.count_params()
    # A removed unit's mean is folded into a bias the bias-free conv did not have: created once, at the new width.
    folded = [e for e in plan.edits.values() if e.bias_delta is not None and e.config.get("use_bias")]
    assert folded
    for layer in pruned.layers:
        if layer.name in plan.edits and plan.edits[layer.name].config.get("use_bias"):
            assert layer.bias.shape == (layer.get_config()["filters"],)
    out = np.asarray(pruned(x))
    assert out.shape == (8, 10) and np.isfinite(out).all()


def _concat_residual():
    """A residual add of a concatenation (4 + 4 channels) and one producer's 8, whose units meet a's and b's."""
    keras = seeded_keras()
    inputs = keras.Input((6,))
    a = keras.layers.Dense(4, name="a")(inputs)
    b = keras.layers.Dense(4, name="b")(inputs)
    c = keras.layers.Dense(8, name="c")(inputs)
    x = keras.layers.Add(name="add")([keras.layers.Concatenate(name="cat")([a, b]), c])
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))


def test_add_of_a_concatenation_splits_the_other_producer_between_the_groups():
    model = _concat_residual()
    dead = {"a": [1], "b": [2], "c": [1, 4 + 2]}  # c's unit 1 meets a's unit 1, c's unit 6 meets b's unit 2
    for name, units in dead.items():
        kernel, bias = model.get_layer(name).get_weights()
        kernel[:, units], bias[units] = 0, 0
        model.get_layer(name).set_weights([kernel, bias])
    plan = plan_structure(model, NeuronPruning(threshold=1e-12, min_keep=0.0))
    assert plan.boundaries == ()
    rows = {row.layer: row for row in plan.layers}
    assert rows["c"].group is None and len(rows["c"].groups) == 2
    by_group = {g.id: g for g in plan.groups}
    assert [by_group[g].dropped for g in rows["c"].groups] == [(1,), (2,)]
    assert {p for g in rows["c"].groups for p in by_group[g].producers} == {"a", "b", "c"}
    pruned = apply_plan(model, plan)
    assert {n: pruned.get_layer(n).get_config()["units"] for n in "abc"} == {"a": 3, "b": 3, "c": 6}
    x = _x((6,))
    np.testing.assert_allclose(np.asarray(pruned(x)), np.asarray(model(x)), atol=1e-5)
    assert pruned.count_params() == plan.totals()["params"]["after"]
    assert plan.totals()["units"]["prunable"] == 16


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_split_producer_prunes_by_ratio(scope):
    model = _concat_residual()
    plan = plan_structure(model, NeuronPruning(ratio=0.5, scope=scope))
    pruned = apply_plan(model, plan)
    units = {n: pruned.get_layer(n).get_config()["units"] for n in "abc"}
    assert units["c"] == units["a"] + units["b"] and units["c"] < 8
    assert pruned.count_params() == plan.totals()["params"]["after"]
