"""The shipped transformer and LSTM classifiers pruned structurally and fine-tuned on the digits, end to end.

Checked independently of prunectl: the saved config is read with zipfile/json, the
kernels with h5py (tests/independent.py), and accuracy by stock Keras on the
held-out digits, which fine-tuning never sees.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from conftest import run
from independent import read_weights

pytestmark = pytest.mark.slow


def _layer_config(path, name: str) -> dict:
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    (layer,) = [entry for entry in config["config"]["layers"] if entry["config"]["name"] == name]
    return layer["config"]


def _accuracy(path, samples) -> float:
    import keras

    model = keras.models.load_model(path, compile=False)
    with np.load(samples / "digits_test.npz") as test:
        predicted = model.predict(test["x"], verbose=0).argmax(-1)
        return float(np.mean(predicted == test["y"]))


def _fine_tune(samples, model: str, out, *args) -> None:
    run(
        "prune", samples / model, *args, "--finetune-epochs", "3", "--data", samples / "digits_train.npz",
        "--val-data", samples / "digits_test.npz", "--seed", "0", "-o", out,
    )  # fmt: skip


def test_transformer_loses_heads_and_feed_forward_units_and_recovers(samples, tmp_path):
    out = tmp_path / "transformer.keras"
    before = _accuracy(samples / "digits_transformer.keras", samples)
    _fine_tune(samples, "digits_transformer.keras", out, "--neuron-ratio", "0.5", "--sparsity", "0.5")
    attention = _layer_config(out, "attention")
    assert attention["num_heads"] == 2 and attention["key_dim"] == 8  # 4 heads of 8 -> 2 heads of 8
    assert _layer_config(out, "ffn_up")["units"] == 32
    weights = read_weights(out)
    # Every attention projection and the feed-forward kernels hold the 50% zeros after fine-tuning.
    for name in ("query", "key", "value", "attention_output"):
        kernel = weights[f"attention/{name}/0"]
        assert kernel.shape[0 if name == "attention_output" else 1] == 2, name
        assert abs(np.mean(kernel == 0) - 0.5) <= 1 / kernel.size + 1e-9, name
    after = _accuracy(out, samples)
    assert before > 0.95 and after > 0.85, (before, after)


def test_lstm_loses_units_and_recovers(samples, tmp_path):
    out = tmp_path / "lstm.keras"
    before = _accuracy(samples / "digits_lstm.keras", samples)
    _fine_tune(samples, "digits_lstm.keras", out, "--neuron-ratio", "0.5")
    assert _layer_config(out, "lstm")["units"] == 32
    weights = read_weights(out)
    assert weights["lstm/lstm_cell/0"].shape == (8, 4 * 32)  # the four gates sliced together
    assert weights["lstm/lstm_cell/1"].shape == (32, 4 * 32)
    assert weights["head/0"].shape == (32, 10)
    after = _accuracy(out, samples)
    assert before > 0.9 and after > 0.85, (before, after)
