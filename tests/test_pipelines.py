"""Ordered pipelines: ``[[step]]`` tables and ``--step`` in any order, ``iterations``, and their outcomes.

Expected outcomes are computed here with numpy from the weights as saved (read with h5py):
which units an l1 cut removes, which weights a magnitude step zeroes, what each stage's
ratio is and how many units each layer keeps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import numpy as np
import pytest
from conftest import run, seeded_keras
from independent import read_weights
from test_cli_errors import fails


def write(folder: Path, text: str, name: str = "r.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def smallest(values: np.ndarray, k: int) -> np.ndarray:
    """A mask of the ``k`` smallest ``|values|``; the test's weights leave no tie at the cut."""
    flat = np.sort(np.abs(values).ravel())
    assert k == 0 or k == flat.size or flat[k - 1] < flat[k], "a tie at the cut: the expected zeros are ambiguous"
    return np.abs(values) <= flat[k - 1] if k else np.zeros(values.shape, bool)


def l1_kept(kernel: np.ndarray, ratio: float) -> np.ndarray:
    """The output units an l1 cut keeps: drop floor(ratio * units) lowest column sums; no ties in these tests."""
    norms = np.abs(kernel).sum(axis=0)
    drop = math.floor(ratio * norms.size)
    order = np.argsort(norms, kind="stable")
    assert drop == 0 or norms[order[drop - 1]] < norms[order[drop]], "a tie at the cut"
    return np.sort(order[drop:])


# --- step order ------------------------------------------------------------------------------


@pytest.fixture
def crafted(tmp_path) -> Path:
    """Dense(6 -> 5 -> 3) whose first kernel ranks its units differently before and after a magnitude step.

    Units 1, 2 and 4 hold one large weight and small ones; a 50% magnitude step zeroes the small ones,
    which drops unit 4 (and 1) to the bottom of the l1 ranking. Before it, units 0 and 1 rank lowest.
    """
    keras = seeded_keras()
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, activation="relu", name="d1"), keras.layers.Dense(3, name="d2")]
    )
    kernel = np.empty((6, 5), "float32")
    kernel[:, 0] = 0.3
    kernel[:, 1] = [1.5, 0.011, 0.012, 0.013, 0.014, 0.015]
    kernel[:, 2] = [2.0, 0.016, 0.017, 0.018, 0.019, 0.02]
    kernel[:, 3] = 0.35
    kernel[:, 4] = [1.2, 0.2, 0.21, 0.22, 0.23, 0.24]
    layer = model.get_layer("d1")
    layer.set_weights([kernel, np.arange(5, dtype="float32") / 10])
    model.compile(optimizer="adam", loss="mse")
    model.save(tmp_path / "crafted.keras")
    return tmp_path / "crafted.keras"


WEIGHTS_STEP = '[[step]]\nsparsity = 0.5\ninclude = "^d1$"\n'
NEURONS_STEP = "[[step]]\nneuron-ratio = 0.4\n"


@pytest.mark.parametrize("order", ["weights-then-neurons", "neurons-then-weights"])
@pytest.mark.parametrize("how", ["recipe", "--step"])
def test_step_order_decides_which_units_go(crafted, tmp_path, order, how):
    before = read_weights(crafted)
    k1, b1, k2 = before["d1/0"], before["d1/1"], before["d2/0"]
    if order == "weights-then-neurons":
        zeroed = np.where(smallest(k1, 15), 0, k1)  # 50% of 30 weights
        kept = l1_kept(zeroed, 0.4)
        expected = zeroed[:, kept]
        steps = [WEIGHTS_STEP, NEURONS_STEP]
        options = ["sparsity=0.5,include=^d1$", "neuron-ratio=0.4"]
    else:
        kept = l1_kept(k1, 0.4)
        expected = np.where(smallest(k1[:, kept], 9), 0, k1[:, kept])  # 50% of the 18 left
        steps = [NEURONS_STEP, WEIGHTS_STEP]
        options = ["neuron-ratio=0.4", "sparsity=0.5,include=^d1$"]
    out = tmp_path / "out.keras"
    if how == "recipe":
        args = ["--recipe", write(tmp_path, "\n".join(steps))]
    else:
        args = [a for text in options for a in ("--step", text)]
    report = json.loads(run("prune", crafted, *args, "-o", out, "--json", "-q").stdout)
    assert [s["kind"] for s in report["steps"]] == order.split("-then-")
    # The two orders keep different units: the magnitude step changes the l1 ranking.
    assert kept.tolist() == ([0, 2, 3] if order == "weights-then-neurons" else [2, 3, 4])
    after = read_weights(out)
    np.testing.assert_array_equal(after["d1/0"], expected)
    np.testing.assert_array_equal(after["d1/1"], b1[kept])
    np.testing.assert_array_equal(after["d2/0"], k2[kept])
    np.testing.assert_array_equal(after["d2/1"], before["d2/1"])


# --- zeros held through later steps ----------------------------------------------------------


def columns_of(zeros: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """For each column of ``zeros``, the column of ``mask`` with exactly its zero pattern (in order).

    Trained weights that are not held at zero do not land on 0.0, so a column's zeros are
    exactly the zeros it was given; with 50% random zeros over 64+ rows no two columns share a pattern.
    """
    found = []
    for column in zeros.T:
        matches = np.flatnonzero((mask == column[:, None]).all(axis=0))
        assert matches.size == 1, f"a pruned column's zeros match {matches.size} of the original columns"
        found.append(int(matches[0]))
    assert found == sorted(found) and len(set(found)) == len(found), found
    return np.array(found)


@pytest.mark.slow
def test_weight_zeros_stay_zero_through_finetune_and_a_structural_step(digits, tmp_path):
    source = digits / "digits_mlp.keras"
    recipe = write(
        tmp_path,
        """
[finetune]
data = "train.npz"
finetune-epochs = 1
seed = 0

[[step]]
sparsity = 0.5

[[step]]
kind = "finetune"

[[step]]
neuron-ratio = 0.25

[[step]]
kind = "finetune"
""",
    )
    out = tmp_path / "out.keras"
    report = json.loads(run("prune", source, "--recipe", recipe, "-o", out, "--json", "-q").stdout)
    assert [s["kind"] for s in report["steps"]] == ["weights", "finetune", "neurons", "finetune"]
    before, after = read_weights(source), read_weights(out)
    masks = {name: smallest(before[f"{name}/0"], before[f"{name}/0"].size // 2) for name in ("fc1", "fc2", "head")}
    assert after["fc1/0"].shape == (64, 192) and after["fc2/0"].shape == (192, 96)
    kept1 = columns_of(after["fc1/0"] == 0, masks["fc1"])
    kept2 = columns_of(after["fc2/0"] == 0, masks["fc2"][kept1])
    np.testing.assert_array_equal(after["head/0"] == 0, masks["head"][kept2])
    # The weights did train: the zeros are held, not the whole model frozen.
    assert not np.allclose(after["fc1/0"], before["fc1/0"][:, kept1])


# --- iterations ------------------------------------------------------------------------------


def stage_ratios(total: float, n: int) -> list[float]:
    """Each stage's fraction of the units left, so that after stage k ``total * k / n`` of the start are gone."""
    return [1 - (1 - total * k / n) / (1 - total * (k - 1) / n) for k in range(1, n + 1)]


def units_after(size: int, ratios: list[float]) -> int:
    for ratio in ratios:
        size -= math.floor(ratio * size + 1e-9)
    return size


@pytest.mark.slow
@pytest.mark.parametrize("ratio, n", [(0.5, 2), (0.6, 3)])
def test_iterations_split_into_stages_that_reach_the_one_shot_size(digits, tmp_path, ratio, n):
    source = digits / "digits_mlp.keras"
    recipe = write(
        tmp_path,
        f'[finetune]\ndata = "train.npz"\nfinetune-epochs = 1\nseed = 0\n\n[[step]]\nneuron-ratio = {ratio}\n'
        f"iterations = {n}\n",
    )
    out, written = tmp_path / "out.keras", tmp_path / "out.toml"
    report = json.loads(
        run("prune", source, "--recipe", recipe, "-o", out, "--recipe-out", written, "--json", "-q").stdout
    )
    kinds = ["neurons", "finetune"] * n
    assert [s["kind"] for s in report["steps"]] == kinds
    steps = tomllib.loads(written.read_text())["step"]
    assert [s["kind"] for s in steps] == kinds
    expected = stage_ratios(ratio, n)
    assert [s["neuron-ratio"] for s in steps[::2]] == pytest.approx(expected, abs=1e-12)
    before, after = read_weights(source), read_weights(out)
    for name in ("fc1", "fc2"):
        size = before[f"{name}/0"].shape[1]
        units = after[f"{name}/0"].shape[1]
        assert units == units_after(size, expected), name
        one_shot = size - math.floor(ratio * size + 1e-9)
        # Rounding down at each stage can leave at most one unit per stage more than one cut does.
        assert one_shot <= units <= one_shot + n - 1, name
    assert after["head/0"].shape == (units, 10)


# --- round trip ------------------------------------------------------------------------------


@pytest.mark.slow
def test_recipe_out_of_a_multi_step_run_repeats_it_bitwise(digits, tmp_path):
    source = digits / "digits_mlp.keras"
    recipe = write(
        tmp_path,
        """
[finetune]
data = "train.npz"
finetune-epochs = 1
seed = 3

[[step]]
sparsity = 0.3

[[step]]
kind = "finetune"

[[step]]
neuron-ratio = 0.25
iterations = 2

[[step]]
sparsity = 0.6
""",
    )
    first, second = tmp_path / "a.keras", tmp_path / "b.keras"
    written, again = tmp_path / "a.toml", tmp_path / "b.toml"
    a = json.loads(
        run("prune", source, "--recipe", recipe, "-o", first, "--recipe-out", written, "--json", "-q").stdout
    )
    b = json.loads(
        run("prune", source, "--recipe", written, "-o", second, "--recipe-out", again, "--json", "-q").stdout
    )
    assert [s["config"] for s in a["steps"]] == [s["config"] for s in b["steps"]]
    # A recipe with a fine-tune step of its own gets no fine-tuning added at the end.
    assert [s["kind"] for s in a["steps"]] == ["weights", "finetune", "neurons", "finetune", "neurons", "weights"]
    assert tomllib.loads(written.read_text())["step"] == tomllib.loads(again.read_text())["step"]
    wa, wb = read_weights(first), read_weights(second)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert wa[key].tobytes() == wb[key].tobytes(), key


# --- the flat pipeline -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_structural_a_weight_step_and_finetune_keep_the_report_shape(digits, tmp_path):
    recipe = write(
        tmp_path,
        '[[step]]\nneuron-ratio = 0.25\n\n[[step]]\nsparsity = 0.5\n\n[finetune]\ndata = "train.npz"\n'
        'val-data = "val.npz"\nepochs = 1\nseed = 0\n',
    )
    report = json.loads(run("prune", digits / "digits_mlp.keras", "--recipe", recipe, "--json", "-q").stdout)
    for key in ("layers", "totals", "structural", "finetune", "evaluation", "steps", "pipeline"):
        assert key in report, key
    assert set(report["finetune"]["evaluation"]) >= {"before_pruning", "after_pruning", "after_finetuning"}
    assert [s["kind"] for s in report["steps"]] == ["neurons", "weights", "finetune"]
    steps = report["steps"]
    assert (
        steps[0]["params"]
        == steps[1]["params"]
        == steps[2]["params"]
        == report["structural"]["totals"]["params"]["after"]
    )
    assert steps[1]["sparsity"] == pytest.approx(0.5, abs=1e-3) and steps[2]["sparsity"] == steps[1]["sparsity"]
    assert steps[2]["metrics"] == report["finetune"]["evaluation"]["after_finetuning"]


# --- --step errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "steps, line",
    [
        (
            ["neuron-ratio"],
            "Error: --step 1: give key=value pairs separated by commas (e.g. neuron-ratio=0.25,round-to=8). "
            "Received: 'neuron-ratio'",
        ),
        (["sparsity=0.5", "sparsity=0.5,color=red"], None),
        (["neuron-ratio=0.5,iterations=2", "kind=finetune,finetune-epochs=1,iterations=2"], None),
        (["neuron-ratio=0.5,iterations=2"], None),
    ],
    ids=["malformed pair", "unknown key", "iterations on a fine-tune step", "iterations without fine-tuning"],
)
def test_step_option_errors_are_one_line(models, steps, line):
    args = [a for text in steps for a in ("--step", text)]
    shown = fails(models, "prune", models / "sequential.keras", *args, code=2, line=line)
    assert "Received:" in shown


def test_step_option_error_lines(models):
    """The wording of each ``--step`` error names the step and what it received."""
    source = models / "sequential.keras"
    assert fails(models, "prune", source, "--step", "sparsity=0.5", "--step", "sparsity=0.5,color=red", code=2) == (
        "Error: --step 2: unknown key 'color' (known: block, calibration-samples, exclude, include, iterations, kind, "
        "pattern, scope, sparsity, threshold, weight-criterion). Received: color='red'"
    )
    # Found here: a fine-tune step's iterations were an "unknown key", so this message could not be reached.
    assert fails(models, "prune", source, "--step", "kind=finetune,finetune-epochs=1,iterations=2", code=2) == (
        "Error: --step 1: iterations split a pruning step into stages; a fine-tune step has none (give it more "
        "epochs). Received: iterations = 2 in a fine-tune step"
    )
    recipe = write(models, "[[step]]\nneuron-ratio = 0.5\n\n[[step]]\nfinetune-epochs = 2\niterations = 3\n")
    assert fails(models, "prune", source, "--recipe", recipe, code=2) == (
        f"Error: recipe {recipe} line 6, step 2: iterations split a pruning step into stages; a fine-tune step "
        "has none (give it more epochs). Received: iterations = 3 in a fine-tune step"
    )
    shown = fails(models, "prune", source, "--step", "neuron-ratio=0.5,iterations=2", code=2)
    assert "iterations = 2" in shown and "Received: no fine-tuning options" in shown
