"""Structural pruning of tiny keras_hub backbones (BERT, GPT-2, ViT, Gemma) through the real executable.

Each backbone is built from its config (random weights, nothing downloaded) with
half of every block's feed-forward units (and, for Gemma, one of its two query
heads) made exactly dead. ``prunectl prune --neuron-ratio 0.5`` must remove exactly
those, write a plain Functional model whose configs say so, and that model, loaded
in a fresh process with keras_hub imported, must give the original's outputs.
Everything is checked from the saved files (zipfile + json, h5py), not through prunectl.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

from hub_models import build, inputs  # noqa: E402

pytestmark = pytest.mark.slow

PRUNECTL = Path(sys.executable).with_name("prunectl")
FFN_KEYS = {"bert": "intermediate_dim", "gpt2": "intermediate_dim", "vit": "mlp_dim", "gemma": "intermediate_dim"}
BLOCKS = {
    "bert": "TransformerEncoder",
    "gpt2": "TransformerDecoder",
    "vit": "ViTEncoder",
    "gemma": "GemmaDecoderBlock",
}


def _build(name: str):
    from tests.conftest import seeded_keras

    seeded_keras()
    return build(name)


def _feedforward(name: str, model) -> list[tuple]:
    """``(up kernel, up bias or None, down kernel)`` of every block's feed-forward part, gates first for Gemma."""
    if name == "vit":
        return [
            (b.mlp.dense_1.kernel, b.mlp.dense_1.bias, b.mlp.dense_2.kernel) for b in model.layers[-1].encoder_layers
        ]
    blocks = [layer for layer in model.layers if layer.__class__.__name__ == BLOCKS[name]]
    if name == "gemma":
        return [(b.gating_ffw_2.kernel, None, b.ffw_linear.kernel) for b in blocks]
    return [
        (
            b._feedforward_intermediate_dense.kernel,
            b._feedforward_intermediate_dense.bias,
            b._feedforward_output_dense.kernel,
        )
        for b in blocks
    ]


def _kill(name: str, model, dead: np.ndarray) -> None:
    """Make units ``dead`` of every feed-forward part (and Gemma's query head 1) contribute exactly nothing."""
    for up, bias, down in _feedforward(name, model):
        up.assign(np.where(np.isin(np.arange(up.shape[-1]), dead)[None, :], 0.0, up.numpy()))
        if bias is not None:
            bias.assign(np.where(np.isin(np.arange(bias.shape[0]), dead), 0.0, bias.numpy()))
        down.assign(np.where(np.isin(np.arange(down.shape[0]), dead)[:, None], 0.0, down.numpy()))
    if name == "gemma":
        for block in model.layers:
            if block.__class__.__name__ == BLOCKS[name]:
                # The other gate too: a dead unit then scores 0 on every weight the criterion reads.
                gate = block.gating_ffw.kernel
                gate.assign(np.where(np.isin(np.arange(gate.shape[-1]), dead)[None, :], 0.0, gate.numpy()))
                for dense in (block.attention.query_dense, block.attention.output_dense):
                    kernel = dense.kernel.numpy()
                    kernel[1] = 0.0
                    dense.kernel.assign(kernel)


PREDICT = """
import sys, json, numpy as np, keras, keras_hub
model = keras.saving.load_model(sys.argv[1])
x = dict(np.load(sys.argv[2]))
x = x["images"] if "images" in x else x
out = keras.tree.map_structure(lambda t: np.asarray(t).tolist(), model(x, training=False))
print(json.dumps([type(model).__name__, out]))
"""


def _layer_configs(path: Path) -> list[dict]:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))["config"]["layers"]


def _saved_kernels(path: Path, suffix: str) -> list[np.ndarray]:
    found = []
    with zipfile.ZipFile(path) as archive, h5py.File(archive.open("model.weights.h5"), "r") as f:
        f.visititems(
            lambda n, o: found.append((n, o[()])) if isinstance(o, h5py.Dataset) and n.endswith(suffix) else None
        )
    return [value for _, value in sorted(found)]


@pytest.mark.parametrize("name", ["bert", "gpt2", "vit", "gemma"])
def test_neuron_ratio_removes_the_dead_feed_forward_units_and_keeps_outputs(name, tmp_path):
    model = _build(name)
    units = _feedforward(name, model)[0][0].shape[-1]
    dead = np.arange(0, units, 2)  # every other unit
    _kill(name, model, dead)
    source, target = tmp_path / f"{name}.keras", tmp_path / f"{name}-pruned.keras"
    model.save(source)
    x = inputs(name)
    np.savez(tmp_path / "x.npz", **(x if isinstance(x, dict) else {"images": x}))
    expected = model(x, training=False)

    run = subprocess.run(
        [str(PRUNECTL), "prune", str(source), "-o", str(target), "--neuron-ratio", "0.5"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "plain Functional keras.Model" in run.stderr

    blocks = [c for c in _layer_configs(target) if c["class_name"] == BLOCKS[name]]
    assert blocks
    for block in blocks:
        assert block["config"][FFN_KEYS[name]] == 16  # of 32 (Gemma's counts its gated pairs: 8 of 16)
        if name == "gemma":
            assert block["config"]["num_query_heads"] == 1

    # The kept units are the live ones: the saved up-projections are the originals' live columns.
    alive = np.setdiff1d(np.arange(units), dead)
    suffix = {"bert": "_feedforward_intermediate_dense/vars/0", "gpt2": "_feedforward_intermediate_dense/vars/0"}
    suffix |= {"vit": "mlp/dense_1/vars/0", "gemma": "gating_ffw_2/vars/0"}
    saved = _saved_kernels(target, suffix[name])
    originals = [up.numpy()[:, alive] for up, _, _ in _feedforward(name, model)]
    assert len(saved) == len(originals)
    for kernel, original in zip(saved, originals, strict=True):
        np.testing.assert_array_equal(kernel, original)

    fresh = subprocess.run(
        [sys.executable, "-c", PREDICT, str(target), str(tmp_path / "x.npz")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    kind, got = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert kind == "Functional"
    import keras

    flat_expected = keras.tree.flatten(expected)
    flat_got = keras.tree.flatten(keras.tree.map_structure_up_to(expected, np.asarray, got))
    for want, have in zip(flat_expected, flat_got, strict=True):
        assert np.asarray(have).shape == tuple(want.shape)
        np.testing.assert_allclose(np.asarray(have), np.asarray(want), atol=1e-5)

    report = json.loads(Path(f"{target}.report.json").read_text())
    totals = report["structural"]["totals"]
    assert totals["params"]["after"] < totals["params"]["before"]
    assert totals["flops"]["after"] < totals["flops"]["before"]
