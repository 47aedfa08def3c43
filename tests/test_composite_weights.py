"""Weight pruning reaches every kernel, however deep: inside MultiHeadAttention, keras_hub blocks and custom layers.

Counts are read back with h5py (tests/independent.py), never through prunectl.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import invoke, run
from hub_models import BACKBONES
from independent import read_weights
from test_cli_errors import assert_error

from prunectl.core.layers.nesting import class_of_folder, snake_case, sublayer_class

# The kernels of attention (query/key/value/output) and MLP layers, by the name their layer has in each backbone.
ATTENTION = ("query", "key", "value", "attention_output")
MLP = {
    "bert": ("feedforward_intermediate_dense", "feedforward_output_dense"),
    "gpt2": ("feedforward_intermediate_dense", "feedforward_output_dense"),
    "vit": ("dense_1", "dense_2"),
    "gemma": ("ffw_gating", "ffw_gating_2", "ffw_linear"),
}


def test_folder_names_are_keras_class_names_in_snake_case():
    assert snake_case("ViTEncoder") == "vi_t_encoder"
    assert snake_case("TransformerEncoder") == "transformer_encoder"
    assert class_of_folder("transformer_encoder_1") == "TransformerEncoder"
    assert class_of_folder("conv2d") == "Conv2D"
    assert class_of_folder("my_block") is None


def test_sublayer_paths_resolve_through_each_class_and_list_items():
    assert sublayer_class("TransformerEncoder", "_self_attention_layer/query_dense") == "EinsumDense"
    assert sublayer_class("ViTEncoder", "encoder_layers/vi_t_encoder_block_1/mlp/dense_2") == "Dense"
    assert sublayer_class("ViTEncoder", "encoder_layers") is None
    assert sublayer_class("Dense", "anything") is None


def _kernels(weights: dict, names) -> dict:
    """The kernels (variable 0) of every layer whose innermost name is one of ``names``."""
    return {k: v for k, v in weights.items() if k.rsplit("/", 2)[-2] in names and k.endswith("/0")}


def _zero_fraction(array: np.ndarray) -> float:
    return float(np.mean(array == 0))


def _assert_half_pruned(before: dict, after: dict, names, blocks: int) -> None:
    kernels = _kernels(after, names)
    assert len(kernels) == len(names) * blocks, sorted(kernels)
    for key, value in kernels.items():
        assert abs(_zero_fraction(value) - 0.5) <= 1 / value.size, key
    for key, value in after.items():
        if not key.endswith("/0"):  # biases, norms' betas, moving statistics
            np.testing.assert_array_equal(value, before[key], err_msg=key)


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> Path:
    """The four tiny keras_hub backbones, built from config (random weights) and saved as .keras."""
    import keras
    import keras_hub

    folder = tmp_path_factory.mktemp("hub")
    keras.utils.set_random_seed(0)
    for name, (cls, kwargs) in BACKBONES.items():
        getattr(keras_hub.models, cls)(**kwargs).save(folder / f"{name}.keras")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BACKBONES))
def test_both_engines_prune_every_attention_and_mlp_kernel_of_a_backbone(backbones, tmp_path, name):
    source = backbones / f"{name}.keras"
    before = read_weights(source)
    outputs = {}
    for engine in ("auto", "keras"):
        outputs[engine] = tmp_path / f"{engine}.keras"
        run("prune", source, "--sparsity", "0.5", "-o", outputs[engine], "--engine", engine, "-q")
        after = read_weights(outputs[engine])
        _assert_half_pruned(before, after, ATTENTION + MLP[name], blocks=2)
    report = json.loads(Path(f"{outputs['auto']}.report.json").read_text())
    assert report["engine"] == "file"
    file_engine, keras_engine = read_weights(outputs["auto"]), read_weights(outputs["keras"])
    assert file_engine.keys() == keras_engine.keys()
    for key in file_engine:  # the same weights zeroed
        np.testing.assert_array_equal(file_engine[key] == 0, keras_engine[key] == 0, err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BACKBONES))
def test_hub_specs_classify_a_saved_backbone_as_keras_sees_it(backbones, name):
    """The contract of core/layers/hub.py: each sublayers map names every weight-holding sub-layer's class."""
    import keras
    import keras_hub  # noqa: F401 (registers the backbone class)

    from prunectl.core.io.modelfile import open_model_file
    from prunectl.core.weights.catalog import keras_weight_entries, tag_prunable, unclassified

    path = backbones / f"{name}.keras"
    with open_model_file(path) as model:
        assert unclassified(model) == []
        in_file = {e.key: (e.class_name, e.prunable) for e in tag_prunable(model.entries) if e.prunable}
    live = keras_weight_entries(keras.models.load_model(path, compile=False))
    assert in_file == {e.key: (e.class_name, e.prunable) for e, _ in live if e.prunable}
    classes = {e.layer.rsplit("/", 1)[-1]: e.class_name for e, _ in live}
    assert {classes[n] for n in ATTENTION} <= {"EinsumDense"}
    assert all(n in classes for n in ATTENTION + MLP[name])


@pytest.mark.slow
def test_pruned_backbones_load_in_a_fresh_process_with_finite_outputs(backbones, tmp_path):
    for name in BACKBONES:
        run("prune", backbones / f"{name}.keras", "--sparsity", "0.5", "-o", tmp_path / f"{name}.keras", "-q")
    script = textwrap.dedent(
        """
        import sys, numpy as np, keras, keras_hub
        for path in sys.argv[1:]:
            model = keras.models.load_model(path)
            inputs = {}
            for tensor in model.inputs:
                shape = (2,) + tuple(d or 8 for d in tensor.shape[1:])
                inputs[tensor.name] = np.ones(shape, tensor.dtype)
            outputs = keras.tree.flatten(model(inputs if len(inputs) > 1 else next(iter(inputs.values()))))
            assert all(np.isfinite(keras.ops.convert_to_numpy(o)).all() for o in outputs), path
        print("ok")
        """
    )
    paths = [str(tmp_path / f"{name}.keras") for name in BACKBONES]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.slow
def test_a_backbone_saved_as_h5_is_refused_in_one_line(backbones, tmp_path):
    """Keras saves a backbone to .h5 but cannot load it back (its config names the class without keras_hub's
    registered name), and the .h5 names sub-layers by layer names only, so neither engine can prune it."""
    import keras
    import keras_hub  # noqa: F401 (registers the backbone class)

    source = tmp_path / "bert.h5"
    keras.models.load_model(backbones / "bert.keras").save(source)
    result = invoke("prune", source, "--sparsity", "0.5", "-o", tmp_path / "file.h5", "--engine", "file")
    assert_error(result, 2, contains=("use --engine keras or auto", "transformer_layer_0"))
    result = invoke("prune", source, "--sparsity", "0.5", "-o", tmp_path / "auto.h5")
    assert_error(result, 1, contains=("Keras cannot load the model", "BertBackbone"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert.h5"]


@pytest.mark.slow
def test_a_missing_keras_hub_is_a_one_line_error(backbones, tmp_path):
    shim = tmp_path / "shim" / "keras_hub"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named keras_hub')\n")
    env = {**os.environ, "PYTHONPATH": str(shim.parent), "TF_CPP_MIN_LOG_LEVEL": "3"}
    source = backbones / "bert.keras"
    output = tmp_path / "out.keras"
    cmd = [sys.executable, "-m", "prunectl", "prune", str(source), "--sparsity", "0.5", "-o", str(output)]
    done = subprocess.run([*cmd, "--engine", "keras"], capture_output=True, text=True, env=env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "Error: bert.keras needs keras_hub to load (pip install keras-hub / prunectl[hub]). "
        "Received: keras_hub>BertBackbone"
    ]
    assert not output.exists()


def _transformer_block(path: Path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input((6, 8))
    h = keras.layers.MultiHeadAttention(2, 4, name="mha")(x, x)
    h = keras.layers.LayerNormalization(name="norm")(x + h)
    f = keras.layers.Dense(16, activation="relu", name="ffn_in")(h)
    f = keras.layers.Dense(8, name="ffn_out")(f)
    keras.Model(x, h + f).save(path)


# Only .keras: Keras 3.15 cannot load a MultiHeadAttention model back from a .h5 it saved ("too many positional
# arguments"), so a .h5 of it, whose sub-layers the file engine cannot classify, cannot be pruned at all.
@pytest.mark.parametrize("fmt", [".keras"])
def test_a_stock_transformer_block_has_every_kernel_pruned(tmp_path, fmt):
    source = tmp_path / f"block{fmt}"
    _transformer_block(source)
    before = read_weights(source)
    for engine in ("auto", "keras"):
        output = tmp_path / f"{engine}{fmt}"
        run("prune", source, "--sparsity", "0.5", "-o", output, "--engine", engine, "-q")
        after = read_weights(output)
        kernels = [k for k in after if k.endswith(("/0", "kernel")) and "norm" not in k]
        assert sorted(k.rsplit("/", 1)[0] for k in kernels) == sorted(
            [f"mha/{n}" for n in ATTENTION] + ["ffn_in", "ffn_out"]
        )
        for key in kernels:
            assert _zero_fraction(after[key]) == 0.5, key
        for key in set(after) - set(kernels):
            np.testing.assert_array_equal(after[key], before[key], err_msg=key)


def _custom_block(path: Path) -> None:
    import keras

    @keras.saving.register_keras_serializable("composite_test")
    class TwoDense(keras.layers.Layer):
        def __init__(self, units=8, **kwargs):
            super().__init__(**kwargs)
            self.units = units
            self.first = keras.layers.Dense(units, name="first")
            self.second = keras.layers.Dense(units, name="second")

        def build(self, shape):
            self.first.build(shape)
            self.second.build(tuple(shape[:-1]) + (self.units,))

        def call(self, x):
            return self.second(keras.ops.relu(self.first(x)))

        def get_config(self):
            return {**super().get_config(), "units": self.units}

    keras.utils.set_random_seed(0)
    x = keras.Input((8,))
    keras.Model(x, TwoDense(8, name="block")(x)).save(path)


def test_a_custom_blocks_dense_kernels_are_pruned_by_the_keras_engine(tmp_path):
    source = tmp_path / "custom.keras"
    _custom_block(source)
    result = invoke("prune", source, "--sparsity", "0.5", "-o", tmp_path / "file.keras", "--engine", "file")
    assert_error(
        result,
        2,
        "Error: the file engine cannot tell what the weights inside these layers are (their classes are known "
        "only to Keras); use --engine keras or auto. Received: block",
    )
    output = tmp_path / "out.keras"
    run("prune", source, "--sparsity", "0.5", "-o", output, "-q")
    report = json.loads(Path(f"{output}.report.json").read_text())
    assert report["engine"] == "keras"
    assert sorted(row["layer"] for row in report["layers"] if row.get("prunable", True)) == [
        "block/first",
        "block/second",
    ]
    before, after = read_weights(source), read_weights(output)
    assert _zero_fraction(after["block/first/0"]) == _zero_fraction(after["block/second/0"]) == 0.5
    np.testing.assert_array_equal(after["block/first/1"], before["block/first/1"])


@pytest.mark.parametrize("engine", ["auto", "keras"])
def test_a_model_with_nothing_to_prune_is_an_error(tmp_path, engine):
    import keras

    x = keras.Input((4,))
    source = tmp_path / "norm.keras"
    keras.Model(x, keras.layers.LayerNormalization(name="norm")(x)).save(source)
    result = invoke("prune", source, "--sparsity", "0.5", "-o", tmp_path / "out.keras", "--engine", engine)
    assert_error(
        result,
        1,
        "Error: nothing to prune: no weight of the model is of a kind weight pruning zeroes (kernels, embeddings); "
        "a custom layer needs a registered LayerSpec. Received: weights in norm (LayerNormalization)",
    )
    assert not (tmp_path / "out.keras").exists()
