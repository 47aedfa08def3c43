"""Data-aware one-shot weight pruning (--weight-criterion wanda|sparsegpt), checked from the saved files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run, seeded_keras
from independent import read_weights
from test_cli_errors import fails

from prunectl.core.training.data_aware import prune_data_aware
from prunectl.core.weights.prune import WeightPruning


def zeros_for(sparsity: float, size: int) -> int:
    return int(np.ceil(round(sparsity * size, 9)))


def kernel(weights: dict, layer: str) -> np.ndarray:
    return next(v for k, v in weights.items() if k.startswith(f"{layer}/") and v.ndim >= 2)


@pytest.fixture
def mlp(tmp_path):
    """A Dense 8-8-4 model whose inputs are correlated (so H is far from diagonal), and 128 calibration inputs."""
    keras = seeded_keras()
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(8, activation="relu", name="d1"), keras.layers.Dense(4, name="d2")]
    )
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((3, 8))
    x = (rng.standard_normal((128, 3)) @ mix + 0.1 * rng.standard_normal((128, 8))).astype("float32")
    np.savez(tmp_path / "calib.npz", x=x)
    model.save(tmp_path / "mlp.keras")
    return tmp_path, x


def prune(folder, criterion, *extra, name="mlp.keras"):
    out = folder / f"out.{criterion}.keras"
    run("prune", folder / name, "-o", out, "--weight-criterion", criterion, "--data", folder / "calib.npz", *extra)
    return out, json.loads((folder / f"out.{criterion}.keras.report.json").read_text())


def test_wanda_scores_by_hand(mlp):
    folder, x = mlp
    keras = seeded_keras()
    model = keras.models.load_model(folder / "mlp.keras")
    w = model.get_layer("d1").kernel.numpy().copy()
    prune_data_aware(model, WeightPruning(sparsity=0.5, criterion="wanda", include=("^d1$",)), x)
    # |W_ij| * ||X_i||, the norm of input i over every sample; each output (column) loses its 4 lowest of 8.
    scores = np.abs(w) * np.sqrt((x.astype(np.float64) ** 2).sum(axis=0))[:, None]
    expected = np.zeros_like(w, dtype=bool)
    for column in range(w.shape[1]):
        expected[np.argsort(scores[:, column])[:4], column] = True
    got = model.get_layer("d1").kernel.numpy()
    np.testing.assert_array_equal(got == 0, expected)
    np.testing.assert_array_equal(got[~expected], w[~expected])  # wanda only zeroes


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_exact_sparsity_per_tensor(models, criterion):
    keras = seeded_keras()
    x = np.random.default_rng(1).standard_normal((40, 6, 6, 2)).astype("float32")
    np.savez(models / "calib.npz", x=x)
    out, report = prune(models, criterion, "--sparsity", "0.6", name="functional.keras")
    weights = read_weights(out)
    for layer in ("conv", "fc", "head"):
        k = kernel(weights, layer)
        assert int(np.count_nonzero(k == 0)) == zeros_for(0.6, k.size), layer
    assert report["engine"] == "keras"
    layers = report["weight_criterion"]["layers"]
    assert [row["layer"] for row in layers] == ["conv", "fc", "head"]  # graph order
    assert report["weight_criterion"]["calibration_samples"] == 40
    outputs = keras.models.load_model(out).predict(x, verbose=0)
    assert np.isfinite(outputs).all()


def test_sparsegpt_beats_magnitude_on_the_layer_output(mlp):
    folder, x = mlp
    original = read_weights(folder / "mlp.keras")
    out, report = prune(folder, "sparsegpt", "--sparsity", "0.5")
    pruned = read_weights(out)
    w, w_new = kernel(original, "d1"), kernel(pruned, "d1")
    zeroed = w_new == 0
    assert int(zeroed.sum()) == zeros_for(0.5, w.size)
    kept = ~zeroed
    assert not np.allclose(w_new[kept], w[kept])  # the kept weights were updated to compensate
    # Magnitude pruning of the same tensor to the same count, computed here.
    magnitude = w.copy()
    magnitude.ravel()[np.argsort(np.abs(w), axis=None)[: zeros_for(0.5, w.size)]] = 0
    xd = x.astype(np.float64)

    def error(new):
        return np.linalg.norm(xd @ w - xd @ new) / np.linalg.norm(xd @ w)

    assert error(w_new) < error(magnitude)
    row = report["weight_criterion"]["layers"][0]
    assert row["output_error"] == pytest.approx(error(w_new), rel=1e-3)
    assert row["magnitude_output_error"] == pytest.approx(error(magnitude), rel=1e-3)


def test_sparsegpt_two_four_holds_the_pattern(mlp):
    folder, _ = mlp
    out, report = prune(folder, "sparsegpt", "--pattern", "2:4")
    for layer in ("d1", "d2"):
        k = kernel(read_weights(out), layer)  # (inputs, outputs): groups of 4 consecutive inputs per output
        groups = (k == 0).reshape(k.shape[0] // 4, 4, k.shape[1]).sum(axis=1)
        assert (groups == 2).all(), layer
    assert all(row["method"].startswith("sparsegpt") for row in report["weight_criterion"]["layers"])


def test_wanda_blocks_zero_whole_blocks(mlp):
    folder, _ = mlp
    out, _ = prune(folder, "wanda", "--sparsity", "0.5", "--block", "2x2")
    k = kernel(read_weights(out), "d1")
    blocks = (k == 0).reshape(4, 2, 4, 2).sum(axis=(1, 3))
    assert set(np.unique(blocks)) <= {0, 4}
    assert int((k == 0).sum()) >= zeros_for(0.5, k.size)


@pytest.mark.parametrize(
    "extra, line",
    [
        (
            ["--weight-criterion", "wanda"],
            "Error: the wanda criterion scores weights on calibration inputs; give --data FILE. "
            "Received: --weight-criterion wanda without --data",
        ),
        (
            ["--weight-criterion", "sparsegpt", "--data", "{calib}", "--engine", "file"],
            "Error: the sparsegpt criterion runs the model on its calibration data, which the file engine cannot; "
            "use --engine keras or auto. Received: --weight-criterion sparsegpt with --engine file",
        ),
        (
            ["--weight-criterion", "sparsegpt", "--data", "{calib}", "--finetune-epochs", "1"]
            + ["--schedule", "polynomial"],
            "Error: the sparsegpt criterion prunes once, before fine-tuning (the masks are then held); "
            "use --schedule oneshot. Received: --weight-criterion sparsegpt with --schedule polynomial",
        ),
        (
            ["--weight-criterion", "wanda", "--data", "{calib}", "--scope", "global"],
            "Error: the wanda criterion prunes layer by layer (each layer's inputs come from the layers pruned "
            "before it), so it has no global cut; use --scope layer. "
            "Received: --weight-criterion wanda with --scope global",
        ),
        (
            ["--calibration-samples", "8"],
            "Error: --calibration-samples is read by a data-aware --weight-criterion (wanda or sparsegpt). "
            "Received: --calibration-samples 8 with --weight-criterion magnitude",
        ),
    ],
)
def test_errors(mlp, extra, line):
    folder, _ = mlp
    extra = [str(folder / "calib.npz") if e == "{calib}" else e for e in extra]
    fails(folder, "prune", folder / "mlp.keras", "--sparsity", "0.5", *extra, code=2, line=line)


def test_threshold_is_refused(mlp):
    folder, _ = mlp
    fails(
        folder,
        "prune",
        folder / "mlp.keras",
        "--threshold",
        "0.1",
        "--weight-criterion",
        "wanda",
        "--data",
        folder / "calib.npz",
        code=2,
        line="Error: the wanda criterion prunes each weight tensor to a sparsity; give --sparsity (or --pattern). "
        "Received: --weight-criterion wanda with --threshold 0.1",
    )


def test_calibration_samples_take_the_first_n(mlp):
    folder, _ = mlp
    _, report = prune(folder, "wanda", "--sparsity", "0.5", "--calibration-samples", "16")
    assert report["weight_criterion"]["calibration_samples"] == 16
    assert report["weight_criterion"]["layers"][0]["calibration_rows"] == 16


@pytest.mark.slow
def test_sparsegpt_then_finetune_holds_its_zeros(digits):
    out = digits / "tuned.keras"
    run(
        "prune",
        digits / "digits_mlp.keras",
        "-o",
        out,
        "--sparsity",
        "0.7",
        "--weight-criterion",
        "sparsegpt",
        "--data",
        digits / "train.npz",
        "--finetune-epochs",
        "1",
    )
    report = json.loads((digits / "tuned.keras.report.json").read_text())
    assert report["finetune"]["weight_criterion"]["criterion"] == "sparsegpt"
    evaluation = report["finetune"]["evaluation"]
    assert "before_pruning" in evaluation or not evaluation
    for key, array in read_weights(out).items():
        if array.ndim == 2 and "bias" not in key:
            assert int(np.count_nonzero(array == 0)) >= zeros_for(0.7, array.size), key


@pytest.mark.slow
def test_sparsegpt_on_the_shipped_cnn(samples):
    keras = seeded_keras()
    out, report = prune_file(samples, "digits_cnn.keras", "digits_train.npz", "0.6")
    test = np.load(samples / "digits_test.npz")
    source = keras.models.load_model(samples / "digits_cnn.keras", compile=False)
    pruned = keras.models.load_model(out, compile=False)
    dense_acc = np.mean(source.predict(test["x"], verbose=0).argmax(-1) == test["y"])
    acc = np.mean(pruned.predict(test["x"], verbose=0).argmax(-1) == test["y"])
    assert acc >= dense_acc - 0.05
    rows = report["weight_criterion"]["layers"]
    assert any("im2col" in row["method"] for row in rows)
    for row in rows:
        assert row["output_error"] < row["magnitude_output_error"], row


def prune_file(folder, name, data, sparsity):
    out = folder / f"pruned.{name}"
    run(
        "prune",
        folder / name,
        "-o",
        out,
        "--sparsity",
        sparsity,
        "--weight-criterion",
        "sparsegpt",
        "--data",
        folder / data,
        "--calibration-samples",
        "128",
    )
    return out, json.loads((folder / f"pruned.{name}.report.json").read_text())


@pytest.mark.slow
def test_sparsegpt_on_mobilenet(tmp_path):
    keras = seeded_keras()
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)
    model.save(tmp_path / "mobilenet.keras")
    x = np.random.default_rng(0).uniform(-1, 1, (16, 32, 32, 3)).astype("float32")
    np.savez(tmp_path / "calib.npz", x=x)
    out, report = prune_file(tmp_path, "mobilenet.keras", "calib.npz", "0.5")
    outputs = keras.models.load_model(out, compile=False).predict(x, verbose=0)
    assert np.isfinite(outputs).all()
    methods = {row["method"] for row in report["weight_criterion"]["layers"]}
    assert any(m.startswith("sparsegpt on im2col") for m in methods)
    assert any(m.startswith("magnitude per output") for m in methods)  # the depthwise kernels


def test_recipe_keys_and_recipe_out(mlp):
    folder, _ = mlp
    recipe = folder / "recipe.toml"
    recipe.write_text(
        'data = "calib.npz"\n[[step]]\nsparsity = 0.5\nweight-criterion = "sparsegpt"\ncalibration-samples = 32\n'
    )
    out = folder / "from_recipe.keras"
    run("prune", folder / "mlp.keras", "-o", out, "--recipe", recipe, "--recipe-out", folder / "again.toml")
    report = json.loads((folder / "from_recipe.keras.report.json").read_text())
    assert report["weight_criterion"]["criterion"] == "sparsegpt"
    assert report["weight_criterion"]["calibration_samples"] == 32
    written = (folder / "again.toml").read_text()
    assert 'weight-criterion = "sparsegpt"' in written and "calibration-samples = 32" in written


def test_summary_line_shows_what_the_data_bought(mlp):
    folder, _ = mlp
    out = folder / "shown.keras"
    result = run(
        "prune",
        folder / "mlp.keras",
        "-o",
        out,
        "--sparsity",
        "0.5",
        "--weight-criterion",
        "sparsegpt",
        "--data",
        folder / "calib.npz",
    )
    report = json.loads((folder / "shown.keras.report.json").read_text())
    rows = report["weight_criterion"]["layers"]
    mean = sum(r["output_error"] for r in rows) / len(rows)
    assert f"sparsegpt on 128 calibration samples: layer output error {mean:.3g}" in result.output


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda k: k.layers.Conv2D(3, 3, strides=2, padding="same", use_bias=False), (2, 7, 6, 2)),
        (lambda k: k.layers.Conv2D(3, (2, 3), dilation_rate=2, use_bias=False), (2, 8, 8, 2)),
        (lambda k: k.layers.Conv1D(3, 3, padding="causal", dilation_rate=2, use_bias=False), (2, 9, 2)),
    ],
)
def test_im2col_rows_reproduce_the_convolution(make, shape):
    from prunectl.core.training.data_aware import _patches
    from prunectl.core.weights.patterns import as_matrix

    keras = seeded_keras()
    layer = make(keras)
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    expected = np.asarray(layer(x))
    kernel = layer.kernel.numpy()
    rows = _patches(x.astype(np.float64), layer.get_config(), kernel.shape)
    got = rows @ as_matrix(kernel, tuple(range(kernel.ndim - 1)))
    np.testing.assert_allclose(got.reshape(expected.shape), expected, atol=1e-5)
