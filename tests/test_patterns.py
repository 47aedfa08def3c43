"""Sparsity patterns (``--pattern N:M``, ``--block RxC``): the math, every layer kind, both engines, reports, errors.

Saved weights are read back with h5py (tests/independent.py) and checked group by group
or block by block with this file's own numpy code, which shares nothing with
``prunectl.core.weights.patterns``: a group is M consecutive entries along the innermost
input axis, named here per layer kind by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run, seeded_keras
from independent import read_weights
from test_cli_errors import fails

from prunectl.core.weights.patterns import (
    Pattern,
    as_matrix,
    block_prune_mask,
    block_threshold_mask,
    from_matrix,
    nm_prune_mask,
    pattern_mask,
)

# --- the math, against small cases computed by hand ------------------------------------------


def test_nm_mask_zeroes_the_lowest_n_of_every_group_per_column():
    scores = np.array(
        [[4, 1], [1, 2], [3, 3], [2, 4], [5, 8], [6, 7], [7, 6], [8, 5]],
        dtype=float,
    )
    expected = np.array(
        [[0, 1], [1, 1], [0, 0], [1, 0], [1, 0], [1, 0], [0, 1], [0, 1]],
        dtype=bool,
    )
    np.testing.assert_array_equal(nm_prune_mask(scores, 2, 4), expected)


def test_nm_ties_go_to_the_earlier_weight():
    np.testing.assert_array_equal(nm_prune_mask(np.ones((4, 1)), 1, 4).ravel(), [True, False, False, False])


def test_matrix_rows_run_over_the_input_axes_last_fastest():
    tensor = np.arange(2 * 3 * 4).reshape(2, 3, 4)  # input axes (0, 2), output axis 1
    matrix = as_matrix(tensor, (0, 2))
    assert matrix.shape == (8, 3)
    assert matrix[:, 0].tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    np.testing.assert_array_equal(from_matrix(matrix, tensor.shape, (0, 2)), tensor)


def test_blocks_go_lowest_mean_first_until_enough_entries_are_covered():
    scores = np.array([[1, 1, 9, 9], [5, 5, 2, 0]], dtype=float)  # 1x2 blocks: means 1, 9, 5, 1
    expected = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(block_prune_mask(scores, 1, 2, 4), expected)
    # 3 entries need two blocks: whole blocks only, never part of one.
    np.testing.assert_array_equal(block_prune_mask(scores, 1, 2, 3), expected)
    np.testing.assert_array_equal(block_threshold_mask(scores, 1, 2, 5.0), expected)


def test_edge_blocks_are_smaller():
    scores = np.array([[1, 1, 1], [9, 9, 0]], dtype=float)  # 1x2 blocks: (1,1) (1) / (9,9) (0)
    mask = block_prune_mask(scores, 1, 2, 1)
    np.testing.assert_array_equal(mask, [[False, False, False], [False, False, True]])


def test_einsum_kernel_groups_along_the_axis_its_equation_sums():
    # "abc,cde->abde": the kernel (c, d, e) sums over c alone.
    scores = np.arange(8 * 2 * 3, dtype=float).reshape(8, 2, 3)
    mask = pattern_mask(scores, Pattern.parse_nm("2:4"), (0,))
    # Along c, the lower two of each group of four go: c = 0, 1 and 4, 5, for every (d, e).
    assert np.all(mask[[0, 1, 4, 5]]) and not np.any(mask[[2, 3, 6, 7]])


# --- an independent checker ------------------------------------------------------------------


def nm_holds(kernel: np.ndarray, axis: int, n: int, m: int) -> np.ndarray:
    """Zeros in each group of ``m`` consecutive entries along ``axis``, one count per group."""
    moved = np.moveaxis(kernel, axis, -1)
    groups = moved.reshape(-1, moved.shape[-1] // m, m)
    return (groups == 0).sum(axis=-1)


# The test model's prunable kernels and the axis each sums over innermost (Keras layouts, by hand):
# Dense/Conv (..., in, out): the one before last; Conv2DTranspose (kh, kw, out, in): the last;
# LSTM kernel and recurrent kernel (in, 4 * units): the first; EinsumDense "abc,cde->abde" (c, d, e): c.
INNER = {
    "conv_b": 2,
    "convt": 3,
    "dense": 0,
    "lstm/kernel": 0,
    "lstm/recurrent_kernel": 0,
    "einsum": 0,
    "head": 0,
}
LEFT = ("conv_a", "depthwise")  # input axes of 1 channel and of a 3-wide window


def build_kinds():
    keras = seeded_keras()
    layers = keras.layers
    inputs = keras.Input((8, 8, 1), name="img")
    x = layers.Conv2D(8, 3, padding="same", name="conv_a")(inputs)
    x = layers.Conv2DTranspose(8, 3, padding="same", name="convt")(x)
    x = layers.Conv2D(8, 3, padding="same", name="conv_b")(x)
    x = layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(16, name="dense")(x)
    x = layers.Reshape((4, 4))(x)
    x = layers.LSTM(8, return_sequences=True, name="lstm")(x)
    x = layers.EinsumDense("abc,cde->abde", output_shape=(4, 2, 4), name="einsum")(x)
    x = layers.Flatten()(x)
    return keras.Model(inputs, layers.Dense(4, name="head")(x))


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kinds")
    model = build_kinds()
    model.save(folder / "kinds.keras")
    model.save(folder / "kinds.h5")
    return folder


# Where each weight sits: a .keras file keys it by position, a .h5 file by name.
KEYS = {
    "lstm/kernel": ("lstm/lstm_cell/0", "lstm/lstm_cell/kernel"),
    "lstm/recurrent_kernel": ("lstm/lstm_cell/1", "lstm/lstm_cell/recurrent_kernel"),
}


def saved(path, name: str) -> np.ndarray:
    """Weight ``name`` (a layer, for its kernel; or ``lstm/...``) read with h5py."""
    weights = read_weights(path)
    return next(weights[k] for k in KEYS.get(name, (f"{name}/0", f"{name}/kernel")) if k in weights)


@pytest.mark.parametrize("fmt", [".h5", ".keras"])
@pytest.mark.parametrize("engine", ["file", "keras"])
def test_two_four_on_every_layer_kind(kinds, fmt, engine):
    source, out = kinds / f"kinds{fmt}", kinds / f"nm-{engine}{fmt}"
    run("prune", source, "--pattern", "2:4", "--engine", engine, "-o", out, "--force", "--quiet")
    for name, axis in INNER.items():
        zeros = nm_holds(saved(out, name), axis, 2, 4)
        assert zeros.size and np.all(zeros == 2), name  # random weights: exactly the pattern's two
    for name in LEFT:
        np.testing.assert_array_equal(saved(out, name), saved(source, name), err_msg=name)
    report = json.loads((kinds / f"nm-{engine}{fmt}.report.json").read_text())
    rows = {(r["layer"], r["weight"]): r for r in report["layers"]}
    assert rows["conv_a", "kernel"]["pattern"] is None and rows["conv_a", "kernel"]["pruned"] is False
    assert rows["conv_a", "kernel"]["pattern_left"] == "its input axis has 1 entries, not a multiple of 4"
    assert rows["depthwise", "kernel"]["pattern_left"] == "its input axis has 3 entries, not a multiple of 4"
    assert rows["einsum", "kernel"]["pattern"] == "2:4" and rows["einsum", "kernel"]["zeros"] == 32
    assert report["totals"]["pattern"] == {"pattern": "2:4", "tensors": 9, "held": 7, "left": 2}
    assert any(n.startswith("2 of 9 selected weight tensors cannot hold the 2:4 pattern") for n in report["notes"])
    expected = sum(saved(out, name).size // 2 for name in INNER)
    assert report["totals"]["prunable"]["zeros"] == expected


def test_both_engines_write_the_same_weights(kinds):
    for fmt in (".h5", ".keras"):
        for args in (
            ("--pattern", "2:4"),
            ("--block", "2x4", "--sparsity", "0.6"),
            ("--block", "1x4", "--threshold", "0.1"),
        ):
            outs = []
            for engine in ("file", "keras"):
                out = kinds / f"same-{engine}{fmt}"
                run("prune", kinds / f"kinds{fmt}", *args, "--engine", engine, "-o", out, "--force", "--quiet")
                outs.append(read_weights(out))
            assert outs[0].keys() == outs[1].keys()
            for key in outs[0]:
                np.testing.assert_array_equal(outs[0][key], outs[1][key], err_msg=f"{args} {fmt} {key}")


def blocks_of(kernel: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Zeros in each ``rows x cols`` block of a (input, output) matrix, by block."""
    r, c = kernel.shape
    return (kernel == 0).reshape(r // rows, rows, c // cols, cols).sum(axis=(1, 3))


def test_blocks_to_a_sparsity_are_whole_and_counted(kinds, tmp_path):
    out = tmp_path / "blocks.keras"
    run("prune", kinds / "kinds.keras", "--block", "1x4", "--sparsity", "0.75", "-o", out, "--quiet")
    for name in ("dense", "head", "lstm/recurrent_kernel"):
        kernel = saved(out, name)
        counts = blocks_of(kernel, 1, 4)
        assert set(np.unique(counts)) <= {0, 4}, name  # each block all zero or untouched
        # The fewest whole blocks that reach 75%.
        assert (counts == 4).sum() == -(-int(np.ceil(0.75 * kernel.size)) // 4), name
    report = json.loads((tmp_path / "blocks.keras.report.json").read_text())
    rows = {(r["layer"], r["weight"]): r for r in report["layers"]}
    assert rows["dense", "kernel"]["pattern"] == "1x4"
    assert rows["dense", "kernel"]["zeros"] == int(np.count_nonzero(saved(out, "dense") == 0))


def test_blocks_below_a_threshold_go_by_their_mean_magnitude(kinds, tmp_path):
    out = tmp_path / "t.h5"
    run("prune", kinds / "kinds.h5", "--block", "2x2", "--threshold", "0.05", "-o", out, "--quiet")
    before, after = saved(kinds / "kinds.h5", "dense"), saved(out, "dense")
    means = np.abs(before).reshape(before.shape[0] // 2, 2, before.shape[1] // 2, 2).mean(axis=(1, 3))
    np.testing.assert_array_equal(blocks_of(after, 2, 2) == 4, means < 0.05)


def test_recipe_out_then_recipe_gives_the_same_weights(kinds, tmp_path):
    for args in (("--pattern", "2:4"), ("--block", "1x4", "--sparsity", "0.5")):
        first, second, recipe = tmp_path / "a.keras", tmp_path / "b.keras", tmp_path / "r.toml"
        run("prune", kinds / "kinds.keras", *args, "-o", first, "--recipe-out", recipe, "--force", "--quiet")
        assert args[1] in recipe.read_text()
        run("prune", kinds / "kinds.keras", "--recipe", recipe, "-o", second, "--force", "--quiet")
        a, b = read_weights(first), read_weights(second)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), args


def test_a_layer_override_sets_its_own_block_sparsity(kinds, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[step]]\nblock = "1x4"\nsparsity = 0.5\n[step.layers]\nhead = { sparsity = 0.25 }\n')
    out = tmp_path / "o.keras"
    run("prune", kinds / "kinds.keras", "--recipe", recipe, "-o", out, "--quiet")
    assert (blocks_of(saved(out, "head"), 1, 4) == 4).mean() == 0.25
    assert (blocks_of(saved(out, "dense"), 1, 4) == 4).mean() == 0.5


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, line",
    [
        (
            ("--pattern", "4:2"),
            "an N:M pattern zeroes N of every M weights, so N must be below M. Received: --pattern 4:2",
        ),
        (("--pattern", "2-4"), "a pattern is written N:M, e.g. 2:4. Received: --pattern 2-4"),
        (("--block", "0x4", "--sparsity", "0.5"), "pattern sizes must be at least 1. Received: --block 0x4"),
        (
            ("--block", "1x1", "--sparsity", "0.5"),
            "a 1x1 block is unstructured pruning; give a larger block. Received: --block 1x1",
        ),
        (
            ("--pattern", "2:4", "--sparsity", "0.5"),
            "an N:M pattern sets the sparsity (2/4); give no --sparsity with --pattern. "
            "Received: --pattern 2:4 --sparsity 0.5",
        ),
        (
            ("--pattern", "2:4", "--threshold", "0.1"),
            "an N:M pattern sets the sparsity (2/4); give no --threshold with --pattern. "
            "Received: --pattern 2:4 --threshold 0.1",
        ),
        (
            ("--pattern", "2:4", "--block", "1x4"),
            "give only one of --pattern and --block. Received: --pattern 2:4 --block 1x4",
        ),
        (
            ("--block", "1x4"),
            "--block zeroes whole blocks up to a sparsity or below a mean magnitude: give exactly one of --sparsity "
            "and --threshold. Received: --block 1x4 --sparsity None --threshold None",
        ),
        (
            ("--block", "1x4", "--sparsity", "0.5", "--scope", "global"),
            "--scope global ranks single weights across tensors, but a pattern prunes each tensor by its own groups "
            "or blocks; use --scope layer. Received: --scope global --block 1x4",
        ),
        (
            ("--pattern", "2:4", "--schedule", "polynomial", "--finetune-epochs", "1", "--data", "{data}"),
            "an N:M pattern holds 2 zeros in every group of 4 from the start, so --schedule polynomial cannot raise "
            "its sparsity step by step; use --schedule oneshot. Received: --schedule polynomial --pattern 2:4",
        ),
    ],
)
def test_pattern_errors(kinds, tmp_path, args, line):
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((4, 8, 8, 1), "float32"), y=np.zeros((4, 4), "float32"))
    args = tuple(str(data) if a == "{data}" else a for a in args)
    fails(kinds, "prune", kinds / "kinds.keras", *args, "-o", tmp_path / "o.keras", code=2, line=f"Error: {line}")


def test_a_model_where_no_weight_can_hold_the_pattern_is_an_error(tmp_path):
    keras = seeded_keras()
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, name="a"), keras.layers.Dense(2, name="b")])
    model.save(tmp_path / "m.h5")
    fails(
        tmp_path,
        "prune",
        tmp_path / "m.h5",
        "--pattern",
        "2:4",
        code=1,
        line="Error: no selected weight can hold the 2:4 pattern, so there is nothing to prune. Received: a/kernel: "
        "its input axis has 6 entries, not a multiple of 4; b/kernel: its input axis has 3 entries, not a multiple "
        "of 4",
    )


def test_the_file_engine_says_why_it_cannot_place_a_pattern_in_nested_einsum_kernels(tmp_path):
    keras = seeded_keras()
    inputs = keras.Input((4, 8))
    x = keras.layers.MultiHeadAttention(2, 4, name="mha")(inputs, inputs)
    keras.Model(inputs, keras.layers.Dense(4, name="head")(x)).save(tmp_path / "m.keras")
    fails(
        tmp_path,
        "prune",
        tmp_path / "m.keras",
        "--pattern",
        "2:4",
        "--engine",
        "file",
        code=2,
        line="Error: the file engine cannot place the 2:4 pattern in these layers' weights: their input axes come "
        "from a nested layer's config (an EinsumDense's equation) that only Keras builds; use --engine keras or "
        "auto. Received: mha/key, mha/attention_output, mha/query, mha/value",
    )
    out = tmp_path / "o.keras"
    run("prune", tmp_path / "m.keras", "--pattern", "2:4", "-o", out, "--quiet")
    report = json.loads((tmp_path / "o.keras.report.json").read_text())
    assert report["engine"] == "keras"
    # query (8, 2, 4) sums over its input features (axis 0); attention_output (2, 4, 8) over heads and depth.
    query = next(v for k, v in read_weights(out).items() if k.startswith("mha/query/") and v.ndim == 3)
    assert np.all(nm_holds(query, 0, 2, 4) == 2)
    output = next(v for k, v in read_weights(out).items() if k.startswith("mha/attention_output/") and v.ndim == 3)
    assert np.all(nm_holds(output, 1, 2, 4) == 2)


# --- fine-tuning ---------------------------------------------------------------------------------


def finetune(digits, out, *extra):
    return run(
        "prune",
        digits / "digits_mlp.h5",
        "-o",
        out,
        "--finetune-epochs",
        "2",
        "--data",
        digits / "train.npz",
        "--val-data",
        digits / "val.npz",
        "--seed",
        "7",
        "--quiet",
        *extra,
    )


@pytest.mark.slow
def test_finetuning_holds_the_two_four_pattern(digits, tmp_path):
    out = tmp_path / "tuned.h5"
    finetune(digits, out, "--pattern", "2:4")
    before = read_weights(digits / "digits_mlp.h5")
    held = 0
    for key, value in read_weights(out).items():
        if not key.endswith("kernel") or value.shape[0] % 4:
            continue
        assert np.all(nm_holds(value, 0, 2, 4) >= 2), key
        assert not np.array_equal(value, before[key]), f"{key} was not trained"
        held += 1
    assert held >= 2


@pytest.mark.slow
def test_the_polynomial_schedule_raises_block_sparsity_step_by_step(digits, tmp_path):
    out = tmp_path / "tuned.h5"
    finetune(digits, out, "--block", "1x4", "--sparsity", "0.75", "--schedule", "polynomial")
    report = json.loads((tmp_path / "tuned.h5.report.json").read_text())
    updates = report["finetune"]["mask_updates"]
    assert len(updates) > 2 and updates[-1][1] == pytest.approx(0.75)
    assert [s for _, s in updates] == sorted(s for _, s in updates)
    for key, value in read_weights(out).items():
        if key.endswith("kernel") and value.shape[1] % 4 == 0:
            counts = blocks_of(value, 1, 4)
            assert set(np.unique(counts)) <= {0, 4}, key
            assert (counts == 4).mean() >= 0.75 - 4 / value.size, key


# --- keras_hub backbones --------------------------------------------------------------------------


def _einsum_input_axes(equation: str) -> tuple[int, ...]:
    inputs, rest = equation.split(",")
    kernel, output = rest.split("->")
    return tuple(i for i, letter in enumerate(kernel) if letter in inputs and letter not in output)


def _kernels(model):
    """(path, kernel, innermost input axis) of every Dense, EinsumDense and Conv layer, however deep."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        kind = layer.__class__.__name__
        if kind == "Dense":
            found.append((layer.path, layer.kernel.numpy(), 0))
        elif kind == "EinsumDense":
            found.append((layer.path, layer.kernel.numpy(), _einsum_input_axes(layer.equation)[-1]))
        elif kind.startswith("Conv") and not kind.endswith("Transpose"):
            found.append((layer.path, layer.kernel.numpy(), layer.kernel.ndim - 2))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "gpt2", "vit", "gemma"])
def test_two_four_on_keras_hub_backbones(name, tmp_path):
    import keras_hub  # noqa: F401  (registers the backbones' classes for loading)
    from hub_models import build, inputs

    seeded_keras()
    build(name).save(tmp_path / "m.keras")
    out = tmp_path / "o.keras"
    run("prune", tmp_path / "m.keras", "--pattern", "2:4", "-o", out, "--quiet")
    import keras

    loaded = keras.saving.load_model(out)
    held = 0
    for path, kernel, axis in _kernels(loaded):
        if kernel.shape[axis] % 4:
            continue
        assert np.all(nm_holds(kernel, axis, 2, 4) >= 2), path
        held += 1
    assert held >= 8
    outputs = loaded(inputs(name))
    for value in outputs.values() if isinstance(outputs, dict) else [outputs]:
        assert np.all(np.isfinite(np.asarray(value)))
