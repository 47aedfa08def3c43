"""A prunectl ``.keras`` output loads in stock Keras without "Skipping variable loading for optimizer".

Keras builds a compiled model's optimizer when it loads the file and warns unless the file holds as
many optimizer variables as that build makes. Each output is loaded by a fresh process that imports
Keras but not prunectl, with warnings turned into errors; its outputs are compared with a forward
pass computed here with numpy from the weights read out of the file with h5py.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest
from conftest import run

LOADER = r"""
import json, os, sys, warnings
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
import numpy as np

x = np.load(sys.argv[1])
found = {}
for path in sys.argv[2:]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = keras.saving.load_model(path)
    optimizer = model.optimizer
    found[path] = {
        "outputs": model.predict(x, verbose=0).tolist(),
        "optimizer": type(optimizer).__name__,
        "iterations": int(optimizer.iterations.numpy()),
        "learning_rate": float(np.asarray(optimizer.learning_rate)),
        "variables": len(optimizer.variables),
    }
print("RESULT " + json.dumps(found))
"""


def _dense_forward(path, x: np.ndarray) -> np.ndarray:
    """digits_mlp's forward pass (Flatten, Dense relu, Dense relu, Dense softmax) from the file's own weights."""
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        weights = archive.read("model.weights.h5")
    layers = [layer["config"] for layer in config["config"]["layers"] if layer["class_name"] == "Dense"]
    h = x.reshape(len(x), -1).astype(np.float64)
    with h5py.File(io.BytesIO(weights), "r") as h5:
        # Keras names a layer's group by its class ("dense_1"); the vars group's attribute holds the layer's name.
        by_name = {h5[f"layers/{key}/vars"].attrs["name"]: h5[f"layers/{key}/vars"] for key in h5["layers"]}
        for layer in layers:
            group = by_name[layer["name"]]
            h = h @ group["0"][()] + group["1"][()]
            if layer["activation"] == "relu":
                h = np.maximum(h, 0)
            elif layer["activation"] == "softmax":
                h = np.exp(h - h.max(axis=1, keepdims=True))
                h /= h.sum(axis=1, keepdims=True)
    return h


@pytest.mark.slow
def test_outputs_load_in_stock_keras_without_optimizer_warning(samples, tmp_path):
    source = samples / "digits_mlp.keras"
    data = ("--data", samples / "digits_train.npz", "--seed", "1")
    outputs = {
        "file engine": ("--sparsity", "0.5"),
        "keep optimizer": ("--sparsity", "0.5", "--keep-optimizer"),
        "keras engine": ("--sparsity", "0.5", "--engine", "keras"),
        "structural": ("--neuron-ratio", "0.25"),
        "fine-tuned": ("--sparsity", "0.5", "--finetune-epochs", "1", *data),
        "fine-tuned, keep optimizer": ("--sparsity", "0.5", "--finetune-epochs", "1", *data, "--keep-optimizer"),
    }
    paths = {}
    for i, (name, args) in enumerate(outputs.items()):
        paths[name] = tmp_path / f"out{i}.keras"
        run("prune", source, *args, "-o", paths[name], "--report", tmp_path / f"out{i}.json", "-q")
    converted = tmp_path / "converted.keras"
    run("prune", samples / "digits_mlp.h5", "--sparsity", "0.5", "-o", converted, "-q")
    paths["converted from .h5"] = converted

    x = np.load(samples / "digits_test.npz")["x"][:16].astype("float32")
    np.save(tmp_path / "x.npy", x)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRUNECTL")}
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, str(tmp_path / "x.npy"), *map(str, paths.values())],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "Skipping variable loading" not in text
    assert not [line for line in text.splitlines() if "optimizer" in line.lower() and "RESULT" not in line], text
    found = json.loads(text.split("RESULT ", 1)[1].splitlines()[0])
    for name, path in paths.items():
        loaded = found[str(path)]
        np.testing.assert_allclose(loaded["outputs"], _dense_forward(path, x), rtol=1e-4, atol=1e-6, err_msg=name)
        assert loaded["optimizer"] == "Adam", name
        # Kept state carries the source's step count; any other output holds a new optimizer's.
        assert (loaded["iterations"] > 0) == (name == "keep optimizer"), name
        assert loaded["learning_rate"] == pytest.approx(1e-3), name


def test_fresh_optimizer_state_is_written_for_the_file_engine(samples, tmp_path):
    out = tmp_path / "out.keras"
    run("prune", samples / "digits_mlp.keras", "--sparsity", "0.5", "-o", out, "-q")
    with (
        zipfile.ZipFile(samples / "digits_mlp.keras") as archive,
        h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as h5,
    ):
        source = {name: h5["optimizer/vars"][name][()] for name in h5["optimizer/vars"]}
    with zipfile.ZipFile(out) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as h5:
        written = {name: h5["optimizer/vars"][name][()] for name in h5["optimizer/vars"]}
    assert sorted(written) == sorted(source)
    for name, value in written.items():
        assert value.shape == source[name].shape and value.dtype == source[name].dtype, name
        if value.dtype.kind == "f" and value.ndim == 0:  # the learning rate
            assert value == source[name], name
        else:
            assert not value.any(), name
    assert any(source[name].any() for name in source if source[name].ndim)  # the sample's state was trained
