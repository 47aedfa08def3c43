"""prune --fold-batchnorm: the folded output checked against the input file, by hand, and in stock Keras."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from conftest import invoke
from independent import read_weights

SAMPLES = "sample_models"


def _classes(path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    return [layer["class_name"] for layer in config["config"]["layers"]]


def _predict(path, x):
    import keras

    return keras.models.load_model(path, compile=False).predict(x, verbose=0)


def test_fold_alone_matches_the_input_model(tmp_path, samples):
    source = samples / "digits_cnn.keras"
    out = tmp_path / "folded.keras"
    data = str(samples / "digits_test.npz")
    result = invoke("prune", str(source), "-o", str(out), "--fold-batchnorm", "--data", data)
    assert result.exit_code == 0, result.output
    assert "BatchNormalization" not in _classes(out) and "Identity" in _classes(out)
    report = json.loads((tmp_path / "folded.keras.report.json").read_text())
    fold = report["fold_batchnorm"]
    assert fold["folded"] == {"bn1": "conv1"} and fold["inputs"] == "data" and fold["samples"] == 256
    assert fold["max_abs_diff"] <= 1e-5
    x = np.load(samples / "digits_test.npz")["x"].astype("float32")
    np.testing.assert_allclose(_predict(out, x), _predict(source, x), atol=1e-5)

    # The folded kernel and bias, computed by hand from the input file's own weights.
    before, after = read_weights(source), read_weights(out)
    bn = {name.split("/")[-1]: value for name, value in before.items() if "bn1" in name}
    assert len(bn) == 4, sorted(before)
    gamma, beta, mean, var = (before[k] for k in sorted(k for k in before if "bn1" in k))
    scale = gamma / np.sqrt(var + 1e-3)
    kernel = next(v for k, v in before.items() if "conv1" in k and v.ndim == 4)
    bias = next((v for k, v in before.items() if "conv1" in k and v.ndim == 1), np.zeros(kernel.shape[-1]))
    folded_kernel = next(v for k, v in after.items() if "conv1" in k and v.ndim == 4)
    folded_bias = next(v for k, v in after.items() if "conv1" in k and v.ndim == 1)
    np.testing.assert_allclose(folded_kernel, kernel * scale, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(folded_bias, bias * scale + beta - mean * scale, rtol=1e-5, atol=1e-6)
    assert not any("bn1" in k for k in after)


def test_fold_after_structural_pruning_keeps_the_pruned_outputs(tmp_path, samples):
    source = samples / "digits_cnn.h5"
    plain, folded = tmp_path / "plain.h5", tmp_path / "folded.h5"
    args = ("--neuron-ratio", "0.5", "--engine", "keras")
    assert invoke("prune", str(source), "-o", str(plain), *args).exit_code == 0
    result = invoke("prune", str(source), "-o", str(folded), *args, "--fold-batchnorm")
    assert result.exit_code == 0, result.output
    assert "Folded 1 BatchNormalization (bn1 -> conv1)" in result.output
    x = np.load(samples / "digits_test.npz")["x"][:64].astype("float32")
    np.testing.assert_allclose(_predict(folded, x), _predict(plain, x), atol=1e-5)
    assert not any("bn1" in k for k in read_weights(folded))


def test_fold_keeps_the_zeros_of_a_weight_step(tmp_path, samples):
    out = tmp_path / "sparse.keras"
    recipe = tmp_path / "recipe.toml"
    source = str(samples / "digits_cnn.keras")
    args = ("--sparsity", "0.5", "--fold-batchnorm", "--recipe-out", str(recipe))
    result = invoke("prune", source, "-o", str(out), *args)
    assert result.exit_code == 0, result.output
    kernel = next(v for k, v in read_weights(out).items() if "conv1" in k and v.ndim == 4)
    assert np.mean(kernel == 0) >= 0.5  # a zero scaled by the BatchNormalization stays zero
    # The recipe repeats the fold.
    again = tmp_path / "again.keras"
    assert invoke("prune", source, "-o", str(again), "--recipe", str(recipe)).exit_code == 0
    assert _classes(again) == _classes(out)


def test_fold_with_nothing_to_fold_writes_nothing(tmp_path, samples):
    out = tmp_path / "mlp.keras"
    result = invoke("prune", str(samples / "digits_mlp.keras"), "-o", str(out), "--fold-batchnorm")
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: --fold-batchnorm found no BatchNormalization") and "Received: 0" in line
    assert not out.exists() and not (tmp_path / "mlp.keras.report.json").exists()


def test_fold_with_dry_run_is_refused(tmp_path, samples):
    source = str(samples / "digits_cnn.keras")
    result = invoke("prune", source, "--neuron-ratio", "0.5", "--dry-run", "--fold-batchnorm")
    assert result.exit_code == 2
    assert "--fold-batchnorm changes the written model; --dry-run writes none" in result.output


@pytest.mark.slow
def test_fold_on_mobilenetv2_in_a_fresh_process(tmp_path):
    """A real architecture: every BatchNormalization after a convolution folded; stock Keras loads the result."""
    import subprocess
    import sys

    import keras

    keras.utils.set_random_seed(3)
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 2, n), rng.normal(size=n), rng.normal(0, 0.1, n), rng.uniform(0.5, 2, n)]
            )
    source, out = tmp_path / "mnv2.keras", tmp_path / "folded.keras"
    model.save(source)
    x = rng.random((16, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", model.predict(x, verbose=0))
    result = invoke("prune", str(source), "-o", str(out), "--fold-batchnorm")
    assert result.exit_code == 0, result.output
    fold = json.loads((tmp_path / "folded.keras.report.json").read_text())["fold_batchnorm"]
    bns = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    assert 0 < len(fold["folded"]) <= bns
    assert _classes(out).count("BatchNormalization") == bns - len(fold["folded"])
    check = (
        "import sys, numpy as np, keras\n"
        "m = keras.models.load_model(sys.argv[1], compile=False)\n"
        "d = np.abs(m.predict(np.load(sys.argv[2]), verbose=0) - np.load(sys.argv[3])).max()\n"
        "print(d); sys.exit(0 if d <= 1e-5 else 1)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check, str(out), str(tmp_path / "x.npy"), str(tmp_path / "expected.npy")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
