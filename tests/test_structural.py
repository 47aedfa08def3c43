"""Structural pruning in the library: graphs of coupled units, criteria, plans and rebuilt models.

The pruned model is checked against the original with the removed units masked
by hand: every layer reading a removed channel gets that channel's input weights
zeroed (the indices are worked out here from the architecture, not by prunectl),
so both models must compute the same outputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build_functional, build_sequential, seeded_keras

from prunectl.core.errors import OptionError, SelectionError
from prunectl.core.structure.criteria import CRITERIA
from prunectl.core.structure.plan import NeuronPruning, apply_plan, choose_units, plan_structure

RNG = np.random.default_rng(0)
SEED = 7  # the Keras seed of the models built here


def build_residual():
    keras = seeded_keras(SEED)
    inputs = keras.Input((6, 6, 2))
    a = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="a")(inputs)
    b = keras.layers.Conv2D(6, 3, padding="same", name="b")(a)
    x = keras.layers.Add(name="add")([a, b])
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Conv2D(4, 1, name="c")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x))


def build_concat():
    keras = seeded_keras(SEED)
    inputs = keras.Input((4, 4, 2))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="a")(inputs)
    b = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="b")(inputs)
    x = keras.layers.Concatenate(name="cat")([a, b])
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(6, activation="relu", name="fc")(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x))


def build_depthwise():
    keras = seeded_keras(SEED)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(6, 1, name="expand")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.SeparableConv2D(4, 3, depth_multiplier=2, name="sep")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x))


def _randomize_bn(model):
    for layer in model.layers:
        if layer.__class__.__name__ == "BatchNormalization":
            layer.set_weights([RNG.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()])


def _mask_rows(model, layer, axis, channels, block=1, weight=0):
    weights = model.get_layer(layer).get_weights()
    rows = (np.asarray(channels)[:, None] * block + np.arange(block)).ravel()
    index = [slice(None)] * weights[weight].ndim
    index[axis] = rows
    weights[weight][tuple(index)] = 0
    model.get_layer(layer).set_weights(weights)


def _dropped(plan, producer):
    (group,) = [g for g in plan.groups if producer in g.producers]
    assert group.dropped, f"nothing dropped from {producer}"
    return np.array(group.dropped)


def _prune_and_mask(model, x, mask):
    plan = plan_structure(model, NeuronPruning(ratio=0.5))
    pruned = apply_plan(model, plan)
    mask(model, plan)
    np.testing.assert_allclose(pruned.predict_on_batch(x), model.predict_on_batch(x), atol=1e-5)
    assert pruned.count_params() == plan.totals()["params"]["after"] < model.count_params()
    return plan, pruned


def test_residual_add_prunes_both_inputs_with_the_same_indices():
    def mask(model, plan):
        dropped = _dropped(plan, "a")
        _mask_rows(model, "b", -2, dropped)
        _mask_rows(model, "c", -2, dropped)
        _mask_rows(model, "head", 0, _dropped(plan, "c"))

    model = build_residual()
    plan, pruned = _prune_and_mask(model, RNG.standard_normal((3, 6, 6, 2)).astype("float32"), mask)
    assert {("a", "b")} <= {tuple(sorted(g.producers)) for g in plan.groups}
    assert pruned.get_layer("a").filters == pruned.get_layer("b").filters == 3


def test_concatenate_keeps_offsets_and_flatten_spreads_positions():
    def mask(model, plan):
        # After the 2x2 pool, Flatten puts channel k of position p at p * 10 + k; a's channels come first.
        for producer, offset in (("a", 0), ("b", 4)):
            for p in range(4):
                _mask_rows(model, "fc", 0, p * 10 + offset + _dropped(plan, producer))
        _mask_rows(model, "head", 0, _dropped(plan, "fc"))

    model = build_concat()
    _, pruned = _prune_and_mask(model, RNG.standard_normal((3, 4, 4, 2)).astype("float32"), mask)
    assert pruned.get_layer("fc").kernel.shape == (4 * (2 + 3), 3)


def test_batchnorm_and_flatten_between_conv_and_dense():
    def mask(model, plan):
        for p in range(16):  # a 4x4 map of 4 channels, flattened
            _mask_rows(model, "fc", 0, p * 4 + _dropped(plan, "conv"))
        _mask_rows(model, "head", 0, _dropped(plan, "fc"))

    model = build_functional()
    _randomize_bn(model)
    _, pruned = _prune_and_mask(model, RNG.standard_normal((3, 6, 6, 2)).astype("float32"), mask)
    assert [w.shape for w in pruned.get_layer("bn").weights] == [(2,)] * 4


def test_depthwise_passes_channels_and_separable_slices_its_multiplier():
    def mask(model, plan):
        dropped = _dropped(plan, "expand")
        _mask_rows(model, "sep", -2, dropped, weight=0)  # depthwise kernel: no bias before the pointwise
        _mask_rows(model, "head", 0, _dropped(plan, "sep"))

    model = build_depthwise()
    _randomize_bn(model)
    _, pruned = _prune_and_mask(model, RNG.standard_normal((3, 6, 6, 3)).astype("float32"), mask)
    assert pruned.get_layer("dw").kernel.shape == (3, 3, 3, 1)
    assert pruned.get_layer("sep").pointwise_kernel.shape == (1, 1, 6, 2)


def _dense_model(width=6):
    keras = seeded_keras(SEED)
    return keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(width, activation="relu", name="d1"),
            keras.layers.Dense(4, activation="relu", name="d2"),
            keras.layers.Dense(3, name="out"),
        ]
    )


def _set_units(model, layer, units, kernel_value, bias_value):
    kernel, bias = model.get_layer(layer).get_weights()
    kernel[:, units], bias[units] = kernel_value, bias_value
    model.get_layer(layer).set_weights([kernel, bias])


@pytest.mark.parametrize("criterion, threshold", [("activation", 1e-6), ("apoz", 0.5)])
def test_dead_units_are_removed_without_changing_outputs(criterion, threshold):
    model = _dense_model()
    x = RNG.random((64, 5)).astype("float32")
    _set_units(model, "d1", [0, 1, 2, 3, 4, 5], np.abs(model.get_layer("d1").get_weights()[0]), 0.1)
    _set_units(model, "d1", [1, 4], 0.0, -1.0)  # relu(-1) == 0 on every input
    plan = plan_structure(model, NeuronPruning(criterion, threshold=threshold), x)
    assert _dropped(plan, "d1").tolist() == [1, 4]
    pruned = apply_plan(model, plan)
    np.testing.assert_allclose(pruned.predict_on_batch(x), model.predict_on_batch(x), atol=1e-5)


def test_dead_filters_behind_batchnorm_are_removed_without_changing_outputs():
    model = build_functional()
    x = RNG.standard_normal((8, 6, 6, 2)).astype("float32")
    gamma, beta, mean, var = model.get_layer("bn").get_weights()
    gamma[[0, 2]], beta[[0, 2]] = 0.0, 0.0  # bn outputs exactly zero for channels 0 and 2
    model.get_layer("bn").set_weights([gamma, beta, mean, var])
    plan = plan_structure(model, NeuronPruning("activation", threshold=1e-6, exclude=("fc",)), x)
    assert _dropped(plan, "conv").tolist() == [0, 2]
    pruned = apply_plan(model, plan)
    np.testing.assert_allclose(pruned.predict_on_batch(x), model.predict_on_batch(x), atol=1e-5)


def test_a_constant_unit_is_folded_into_the_next_bias():
    model = _dense_model()
    x = RNG.random((64, 5)).astype("float32")
    _set_units(model, "d1", [0, 1, 2, 3, 4, 5], np.abs(model.get_layer("d1").get_weights()[0]) + 1, 1.0)
    _set_units(model, "d1", [3], 0.0, 0.01)  # always 0.01: dropped, and 0.01 * its row moves into d2's bias
    plan = plan_structure(model, NeuronPruning("activation", threshold=0.05, exclude=("d2",)), x)
    assert _dropped(plan, "d1").tolist() == [3]
    pruned = apply_plan(model, plan)
    np.testing.assert_allclose(pruned.predict_on_batch(x), model.predict_on_batch(x), atol=1e-5)


def test_l1_and_l2_rank_units_by_their_weights():
    keras = seeded_keras(SEED)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d"), keras.layers.Dense(1, name="o")])
    kernel = np.array([[3, 1], [0, 1], [0, 1], [0, 1]], dtype="float32")  # l1: 3 vs 4; l2: 3 vs 2
    model.get_layer("d").set_weights([kernel, np.zeros(2, "float32")])
    assert _dropped(plan_structure(model, NeuronPruning("l1", ratio=0.5)), "d").tolist() == [0]
    assert _dropped(plan_structure(model, NeuronPruning("l2", ratio=0.5)), "d").tolist() == [1]


def test_activation_and_apoz_rank_units_by_what_the_next_layer_sees():
    model = _dense_model(width=3)
    x = RNG.random((200, 5)).astype("float32")
    kernel = np.zeros((5, 3), "float32")
    kernel[0] = [0.0, 1.0, 10.0]  # unit 0: always 0.5; unit 1: x0 - 0.5, positive half the time; unit 2: large
    model.get_layer("d1").set_weights([kernel, np.array([0.5, -0.5, -4.0], "float32")])
    activation = plan_structure(model, NeuronPruning("activation", ratio=0.5, exclude=("d2",)), x)
    apoz = plan_structure(model, NeuronPruning("apoz", ratio=0.5, exclude=("d2",)), x)
    assert _dropped(activation, "d1").tolist() == [1]  # mean |a|: 0.5, ~0.125, ~1.0
    assert _dropped(apoz, "d1").tolist() == [1]  # positive: 1.0, ~0.5, ~0.6


@pytest.mark.parametrize("name", CRITERIA.names())
def test_every_criterion_round_trips_its_config_and_runs(name):
    criterion = CRITERIA.get(name)()
    assert CRITERIA.get(name)(**criterion.get_config()).get_config() == criterion.get_config()
    model = build_sequential()
    x = RNG.standard_normal((16, 6)).astype("float32")
    plan = plan_structure(model, NeuronPruning(name, ratio=0.4), x)
    assert plan.criterion == {"name": name, **criterion.get_config()}
    assert apply_plan(model, plan).predict_on_batch(x).shape == (16, 3)


def test_choose_units_keeps_one_rounds_up_and_cuts_globally():
    scores = {0: np.array([0.1, 0.2, 0.3, 0.4]), 1: np.array([5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0])}
    kept = choose_units(scores, NeuronPruning(threshold=100.0))
    assert kept[0].tolist() == [3] and kept[1].tolist() == [7]  # at least one: the best
    kept = choose_units(scores, NeuronPruning(ratio=0.5, scope="global"))
    # The 6 lowest LAMP scores (tests/test_global_scope.py): 0.1 (.033), 5.0 to 8.0 (.040 to .125), 0.2 (.138).
    assert kept[0].tolist() == [2, 3] and kept[1].tolist() == [4, 5, 6, 7]
    kept = choose_units(scores, NeuronPruning(ratio=0.5, round_to=3))
    assert kept[0].tolist() == [1, 2, 3] and kept[1].tolist() == [2, 3, 4, 5, 6, 7]


def test_model_outputs_and_unknown_layers_are_left_whole():
    keras = seeded_keras(SEED)
    inputs = keras.Input((5,))
    x = keras.layers.Dense(4, activation="relu", name="d1")(inputs)
    x = keras.layers.Permute((1,), name="norm")(x)
    x = keras.layers.Dense(4, activation="relu", name="d2")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(x))
    plan = plan_structure(model, NeuronPruning(ratio=0.5))
    frozen = {g.producers[0]: g.frozen for g in plan.groups}
    assert frozen == {"d1": "feeds norm (Permute)", "d2": None, "out": "model output"}
    assert plan.boundaries == (("norm", "Permute", "no rule for class Permute"),)


def test_nothing_prunable_is_a_clear_error():
    keras = seeded_keras(SEED)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="only")])
    with pytest.raises(SelectionError, match=r"^no prunable units: .*Received: include=\[\], exclude=\[\]$"):
        plan_structure(model, NeuronPruning(ratio=0.5))


def test_exclude_leaves_the_whole_group():
    plan = plan_structure(build_residual(), NeuronPruning(ratio=0.5, exclude=("^b$",)))
    (group,) = [g for g in plan.groups if "a" in g.producers]
    assert group.frozen == "b is not selected" and group.dropped == ()


def test_activation_criteria_need_data():
    with pytest.raises(
        OptionError,
        match=r"the apoz criterion needs calibration data; give --data FILE\. "
        r"Received: neuron_criterion='apoz'",
    ):
        plan_structure(build_sequential(), NeuronPruning("apoz", ratio=0.5))


def test_plan_is_a_value_recorded_as_json():
    plan = plan_structure(build_functional(), NeuronPruning(ratio=0.5))
    assert plan == plan_structure(build_functional(), NeuronPruning(ratio=0.5))
    data = plan.to_dict()
    rows = {r["layer"]: r for r in data["layers"]}
    assert (rows["conv"]["units_before"], rows["conv"]["units_after"]) == (4, 2)
    # conv: 3x3x2 kernel at 4x4 outputs; fc reads 16 positions x channels; head reads fc.
    assert rows["conv"]["flops_before"] == 3 * 3 * 2 * 4 * 16 and rows["conv"]["flops_after"] == 3 * 3 * 2 * 2 * 16
    assert rows["fc"]["flops_after"] == 16 * 2 * 4
    assert data["totals"]["flops"]["before"] == sum(r["flops_before"] for r in data["layers"])


@pytest.mark.slow
def test_mobilenet_v2_builds_runs_and_shrinks():
    keras = seeded_keras(SEED)
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=5)
    plan = plan_structure(model, NeuronPruning(ratio=0.5, round_to=8))
    pruned = apply_plan(model, plan)
    assert pruned.predict_on_batch(np.zeros((2, 32, 32, 3), "float32")).shape == (2, 5)
    assert pruned.count_params() == plan.totals()["params"]["after"]
    assert plan.totals()["flops"]["ratio"] > 2
    residual = [g for g in plan.groups if len(g.producers) > 1]
    assert residual and all(g.units_after % 8 == 0 for g in plan.groups if not g.frozen)
