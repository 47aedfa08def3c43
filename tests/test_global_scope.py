"""The global structural cut: LAMP scores, ratios counted per layer, the per-group floor, group reduction.

Expected values are worked out by hand here (LAMP sums, which units a cut takes) or
counted from the rebuilt model's layer configs, never read back from the plan.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import invoke, run, seeded_keras

from prunectl.core.errors import OptionError
from prunectl.core.structure.criteria import lamp
from prunectl.core.structure.plan import NeuronPruning, apply_plan, choose_units, plan_structure


def test_lamp_scores_match_hand_computed_values():
    # squares 1, 4, 9: each over the sum of the squares at or above it
    np.testing.assert_allclose(lamp(np.array([1.0, 2.0, 3.0])), [1 / 14, 4 / 13, 9 / 9])
    # ties share a score (both 2s: 4 / (4 + 4)); 1: 1 / 9
    np.testing.assert_allclose(lamp(np.array([2.0, 1.0, 2.0])), [0.5, 1 / 9, 0.5])
    np.testing.assert_array_equal(lamp(np.zeros(3)), np.zeros(3))


def test_lamp_is_scale_free():
    scores = np.array([0.3, 0.1, 0.7, 0.2])
    np.testing.assert_allclose(lamp(scores * 1000), lamp(scores))


SCORES = {0: np.array([0.1, 0.2, 0.3, 0.4]), 1: np.array([5.0, 6.0, 7.0, 8.0])}


def test_global_cut_compares_groups_of_different_scale():
    # LAMP: group 0 -> .01/.30, .04/.29, .09/.25, 1 = .033, .138, .36, 1
    #       group 1 -> 25/174, 36/149, 49/113, 1 = .144, .242, .434, 1
    # half of 8 units: .033, .138 (group 0) and .144, .242 (group 1). Raw scores would empty group 0.
    kept = choose_units(SCORES, NeuronPruning(ratio=0.5, scope="global", min_keep=0.0))
    assert kept[0].tolist() == [2, 3] and kept[1].tolist() == [2, 3]


def test_global_ratio_counts_each_producer_of_a_group():
    # Group 0 has 3 producers: its units count 3 times, 12 + 4 = 16 per-layer units, 0.375 of them = 6.
    # In LAMP order: group 0's unit 0 (3), its unit 1 (6); group 1's unit 0 would make 7 > 6.
    kept = choose_units(SCORES, NeuronPruning(ratio=0.375, scope="global", min_keep=0.0), {0: 3, 1: 1})
    assert kept[0].tolist() == [2, 3] and kept[1].tolist() == [0, 1, 2, 3]
    # Counted once per group, 0.375 of 8 = 3 units: .033, .138 and .144.
    kept = choose_units(SCORES, NeuronPruning(ratio=0.375, scope="global", min_keep=0.0))
    assert kept[0].tolist() == [2, 3] and kept[1].tolist() == [1, 2, 3]


def test_min_keep_is_a_floor_for_every_scope_and_threshold():
    # 0.75 of 4 = 3 units stay in each group: the cut stops at 2 units (.033, then .144), short of 4.
    kept = choose_units(SCORES, NeuronPruning(ratio=0.5, scope="global", min_keep=0.75))
    assert kept[0].tolist() == [1, 2, 3] and kept[1].tolist() == [1, 2, 3]
    # Group 0's three 0.1s score .01 / 100.03 each, below all of group 1 (5..12: .040, .061, .088, ...);
    # at its floor of 2 it gives up no more, so group 1 gives 4 of the 6 units (ties keep the lower index).
    scores = {0: np.array([0.1, 0.1, 0.1, 10.0]), 1: np.arange(5.0, 13.0)}
    kept = choose_units(scores, NeuronPruning(ratio=0.5, scope="global", min_keep=0.5))
    assert kept[0].tolist() == [0, 3] and kept[1].tolist() == [4, 5, 6, 7]
    kept = choose_units(scores, NeuronPruning(ratio=0.5, scope="global", min_keep=0.0))
    assert kept[0].tolist() == [3] and kept[1].tolist() == [3, 4, 5, 6, 7]
    # 0.9 of each group would leave 1 unit; the floor of 0.5 keeps 2.
    kept = choose_units(SCORES, NeuronPruning(ratio=0.9, min_keep=0.5))
    assert kept[0].tolist() == [2, 3] and kept[1].tolist() == [2, 3]
    # No unit passes the threshold; 0.25 of 4 is 1 unit each, the best.
    kept = choose_units(SCORES, NeuronPruning(threshold=100.0, min_keep=0.25))
    assert kept[0].tolist() == [3] and kept[1].tolist() == [3]
    # ceil(0.3 * 4) = 2 units, rounded up to a multiple of 3.
    kept = choose_units(SCORES, NeuronPruning(threshold=100.0, min_keep=0.3, round_to=3))
    assert kept[0].tolist() == [1, 2, 3] and kept[1].tolist() == [1, 2, 3]
    # With no floor at all, still at least one unit.
    kept = choose_units(SCORES, NeuronPruning(threshold=100.0, min_keep=0.0))
    assert kept[0].tolist() == [3] and kept[1].tolist() == [3]


@pytest.mark.parametrize("value", [1.0, -0.1, float("nan")])
def test_min_keep_is_checked_in_the_library(value):
    with pytest.raises(OptionError, match=r"min_keep must be a finite number in \[0, 1\)\. Received: min_keep="):
        NeuronPruning(ratio=0.5, min_keep=value)


def test_group_importance_is_the_mean_over_its_producers():
    """Two Dense layers coupled by an Add: a unit's l1 score is the mean of its two kernels' column norms."""
    keras = seeded_keras(3)
    inputs = keras.Input((3,))
    a = keras.layers.Dense(2, name="a")(inputs)
    b = keras.layers.Dense(2, name="b")(inputs)
    x = keras.layers.Add(name="add")([a, b])
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(x))
    # l1 of unit 0: a 1, b 1 -> mean 1.0, sum 2.0; unit 1: a 4, b 0 -> mean 2.0, sum 4.0
    model.get_layer("a").set_weights([np.array([[1, 4], [0, 0], [0, 0]], "float32"), np.zeros(2, "float32")])
    model.get_layer("b").set_weights([np.array([[0, 0], [1, 0], [0, 0]], "float32"), np.zeros(2, "float32")])
    # Below 1.5 only under the mean: unit 0 goes. Summed, no unit would be below it.
    plan = plan_structure(model, NeuronPruning("l1", threshold=1.5, min_keep=0.0))
    (group,) = [g for g in plan.groups if "a" in g.producers]
    assert sorted(group.producers) == ["a", "b"] and group.dropped == (0,)
    # Between the means (1.0, 2.0) and below both sums: unit 0 stays.
    plan = plan_structure(model, NeuronPruning("l1", threshold=0.9, min_keep=0.0))
    (group,) = [g for g in plan.groups if "a" in g.producers]
    assert group.dropped == ()


def _bad(message: str) -> str:
    return f"Error: Invalid value for '--min-keep': {message}"


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--neuron-ratio", "0.5", "--min-keep", "1"],
            _bad("--min-keep must be a finite number in [0, 1). Received: --min-keep=1.0"),
        ),
        (
            ["--neuron-ratio", "0.5", "--min-keep", "-0.2"],
            _bad("--min-keep must be a finite number in [0, 1). Received: --min-keep=-0.2"),
        ),
        (
            ["--neuron-ratio", "0.5", "--min-keep", "nan"],
            _bad("--min-keep must be a finite number in [0, 1). Received: --min-keep=nan"),
        ),
        (
            ["--threshold", "0.1", "--min-keep", "0.2"],
            "Error: --min-keep needs --neuron-threshold or --neuron-ratio. Received: --min-keep 0.2",
        ),
    ],
    ids=["one", "negative", "nan", "alone"],
)
def test_bad_min_keep_is_a_usage_error(samples, args, message):
    result = invoke("prune", samples / "digits_mlp.h5", *args)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == message
    assert not (samples / "digits_mlp.pruned.h5").exists()


def _units(model) -> dict[str, int]:
    """Units of each Dense/convolution layer, read from its config."""
    out = {}
    for layer in model.layers:
        config = layer.get_config()
        if "filters" in config or "units" in config:
            out[layer.name] = config.get("filters", config.get("units"))
    return out


def test_dry_run_reports_units_and_params_removed_and_min_keep(samples):
    report = json.loads(
        run(
            "prune",
            *(samples / "digits_cnn.h5", "--neuron-ratio", "0.5", "--scope", "global", "--min-keep", "0.25"),
            *("--dry-run", "--json", "-q"),
        ).stdout
    )
    assert report["options"]["min_keep"] == 0.25 and report["options"]["scope"] == "global"
    plan = report["structural"]
    assert plan["criterion"]["global_score"] == "lamp"
    units = {row["layer"]: (row["units_before"], row["units_after"]) for row in plan["layers"] if row["units_before"]}
    # conv1, conv2, fc1 may be pruned (32 + 64 + 128 units); the head is a model output.
    assert units["head"] == (10, 10)
    removed = sum(before - after for before, after in units.values())
    assert plan["totals"]["units"]["prunable"] == 224 and removed == 112
    assert plan["totals"]["units"]["removed"] == pytest.approx(0.5)
    params_before = sum(row["params_before"] for row in plan["layers"])
    params_after = sum(row["params_after"] for row in plan["layers"])
    assert plan["totals"]["params"]["removed"] == pytest.approx(1 - params_after / params_before)
    assert all(after >= math.ceil(0.25 * before) for before, after in units.values())


def test_recipe_takes_min_keep(samples, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("[[step]]\nneuron-ratio = 0.9\nmin-keep = 0.5\n")
    output = tmp_path / "out.h5"
    run("prune", samples / "digits_mlp.h5", "--recipe", recipe, "-o", output, "-q")
    keras = seeded_keras()
    before = _units(keras.models.load_model(samples / "digits_mlp.h5", compile=False))
    after = _units(keras.models.load_model(output, compile=False))
    # 0.9 would leave 10% of each hidden layer; the floor keeps half.
    assert {k: after[k] for k in after if after[k] != before[k]} == {k: before[k] // 2 for k in before if k != "head"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ResNet50", "MobileNetV2"])
def test_global_ratio_removes_that_share_of_per_layer_units_without_collapse(name):
    keras = seeded_keras()
    model = getattr(keras.applications, name)(input_shape=(32, 32, 3), weights=None, classes=10)
    step = NeuronPruning(ratio=0.3, scope="global")
    pruned = apply_plan(model, plan_structure(model, step))
    before, after = _units(model), _units(pruned)
    output = model.layers[-1].name  # the classifier: a model output, never shrunk
    assert after[output] == before[output] == 10
    del before[output], after[output]
    removed = 1 - sum(after.values()) / sum(before.values())
    assert removed == pytest.approx(0.3, abs=0.005)
    low = {k: (before[k], after[k]) for k in before if after[k] < math.ceil(step.min_keep * before[k])}
    assert low == {}
    assert pruned.predict_on_batch(np.zeros((1, 32, 32, 3), "float32")).shape == (1, 10)
