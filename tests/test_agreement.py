"""A model whose config and weights disagree is refused by the file engine, as Keras refuses it.

Each crafted file is a committed sample model with its config JSON or its weights
edited in place (h5py, zipfile). The file engine must exit 1 with the exact
``Error:`` line and write nothing; stock ``keras.models.load_model`` must refuse the
same file (so the check is no stricter than Keras there). Edits Keras accepts still
prune, and the output loads in Keras.

The check reads what Keras accepts from its installed source (``core/io/keras_api.py``);
the tests at the end compare that reading with the imported Keras, class by class.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import SAMPLES, invoke, run, seeded_keras
from test_benchmarks import _load
from test_cli_errors import assert_error, snapshot

from prunectl.core.io import keras_api
from prunectl.core.io.agreement import disagreements
from prunectl.core.io.modelfile import open_model_file

FORMATS = [".h5", ".keras"]


# --- crafting files ----------------------------------------------------------------------------


def _rezip(path: Path, replace: dict[str, bytes]) -> None:
    """Rewrite the .keras archive ``path`` with some members replaced (stored, as Keras writes them)."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    members.update(replace)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def edit_config(path: Path, edit) -> None:
    """Apply ``edit(config)`` to the model config of ``path``, in place."""
    if path.suffix == ".h5":
        with h5py.File(path, "r+") as h5:
            config = json.loads(h5.attrs["model_config"])
            edit(config)
            h5.attrs["model_config"] = json.dumps(config)
        return
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    edit(config)
    _rezip(path, {"config.json": json.dumps(config).encode()})


def edit_weights(path: Path, edit) -> None:
    """Apply ``edit(weights, layer)`` to the weights of ``path`` in place.

    ``layer(name)`` gives ``(group, names)``: the group holding that layer's
    weights and a function setting the .h5 ``weight_names`` list (a no-op for .keras,
    whose ``vars`` group lists its weights by position).
    """
    if path.suffix == ".h5":
        with h5py.File(path, "r+") as h5:

            def layer(name):
                top = h5["model_weights"][name]

                def names(new):
                    top.attrs["weight_names"] = np.array([f"{name}/{n}".encode() for n in new])

                return top[name], names

            edit(h5, layer)
        return
    scratch = path.with_name("weights.scratch.h5")
    with zipfile.ZipFile(path) as archive:
        scratch.write_bytes(archive.read("model.weights.h5"))
    with h5py.File(scratch, "r+") as h5:

        def layer(name):
            found = []
            h5.visititems(
                lambda key, obj: found.append(obj) if key.endswith("vars") and obj.attrs.get("name") == name else None
            )
            return found[0], lambda new: None

        edit(h5, layer)
    data = scratch.read_bytes()
    scratch.unlink()
    _rezip(path, {"model.weights.h5": data})


def _layer(config: dict, name: str) -> dict:
    return next(layer for layer in config["config"]["layers"] if layer["config"]["name"] == name)


def _weight(name: str, fmt: str, index: int) -> str:
    return name if fmt == ".h5" else str(index)


def _units(config):
    _layer(config, "fc1")["config"]["units"] = 129


def _unknown_class(config):
    _layer(config, "conv1")["class_name"] = "Conv2X"


def _renamed_key(config):
    layer = _layer(config, "fc1")["config"]
    layer["unitz"] = layer.pop("units")


def _unknown_activation(config):
    _layer(config, "fc1")["config"]["activation"] = "reluX"


def _unknown_initializer(config):
    _layer(config, "fc1")["config"]["kernel_initializer"]["class_name"] = "GlorotUniformX"


def _kernel_size(config):
    _layer(config, "conv1")["config"]["kernel_size"] = [5, 5]


def _removed_layer(config):
    layers = config["config"]["layers"]
    layers.remove(_layer(config, "fc2"))


def _numeric_activation(config):
    _layer(config, "fc1")["config"]["activation"] = 7


def _tensor_without_dtype(config):
    del _layer(config, "head")["inbound_nodes"][0]["args"][0]["config"]["dtype"]


def _dtype_without_class_name(config):
    policy = _layer(config, "head")["config"]["dtype"]
    policy["cless_name"] = policy.pop("class_name")


def _dtype_key_renamed(config):
    policy = _layer(config, "conv1")["config"]["dtype"]["config"]
    policy["name_x"] = policy.pop("name")


def _dtype_extra_key(config):
    _layer(config, "conv1")["config"]["dtype"]["config"]["kernel_size"] = [3]


def _short_kernel_size(config):
    _layer(config, "conv1")["config"]["kernel_size"] = [3]


def _dropped_referenced_layer(config):
    config["config"]["layers"].remove(_layer(config, "pool"))


def _output_names_missing_layer(config):
    config["config"]["output_layers"] = ["head_x", 0, 0]


def _legacy_nodes(config):
    """The Keras 2 form of inbound_nodes, ``[[[name, node, tensor, kwargs]]]``, with one naming a dropped layer."""
    for layer in config["config"]["layers"]:
        layer["inbound_nodes"] = [
            [[t["config"]["keras_history"][0], 0, 0, {}] for t in node["args"] if isinstance(t, dict)]
            for node in layer["inbound_nodes"]
        ]
    config["config"]["layers"].remove(_layer(config, "pool"))


def _dropped_flatten(config):
    config["config"]["layers"].remove(_layer(config, "flatten"))


def _conv_reads_the_image(config):
    """conv2 (a 32-channel kernel) now reads the 1-channel image."""
    _layer(config, "conv2")["inbound_nodes"][0]["args"][0]["config"]["keras_history"] = ["image", 0, 0]


def _extra_weight(fmt):
    def edit(h5, layer):
        group, names = layer("fc1")
        group.create_dataset(_weight("extra", fmt, 2), data=np.zeros(128, "float32"))
        names(["kernel", "bias", "extra"])

    return edit


def _missing_bias(fmt):
    def edit(h5, layer):
        group, names = layer("fc1")
        del group[_weight("bias", fmt, 1)]
        names(["kernel"])

    return edit


def _bn_mismatch(fmt):
    def edit(h5, layer):
        group, _ = layer("bn1")
        key = _weight("moving_mean", fmt, 2)
        del group[key]
        group.create_dataset(key, data=np.zeros(31, "float32"))

    return edit


# (name, sample, config edit or None, weights edit factory or None, the Error line's ``what`` by format)
CASES = [
    (
        "units",
        "digits_cnn",
        _units,
        None,
        {fmt: "layer 'fc1' (Dense): config says units=129 but its kernel has shape (1024, 128)" for fmt in FORMATS},
    ),
    (
        "unknown-class",
        "digits_cnn",
        _unknown_class,
        None,
        {
            ".h5": "layer 'conv1' (Conv2X): unknown class; keras.layers has no 'Conv2X'",
            ".keras": "layer 'conv1' (Conv2X): unknown class; keras.layers has no 'Conv2X'",
        },
    ),
    (
        "renamed-key",
        "digits_cnn",
        _renamed_key,
        None,
        {fmt: "layer 'fc1' (Dense): config key 'unitz' is not an argument of keras.layers.Dense" for fmt in FORMATS},
    ),
    (
        "unknown-activation",
        "digits_cnn",
        _unknown_activation,
        None,
        {fmt: "layer 'fc1' (Dense): activation 'reluX' is not a Keras activation" for fmt in FORMATS},
    ),
    (
        "unknown-initializer",
        "digits_cnn",
        _unknown_initializer,
        None,
        {
            fmt: "layer 'fc1' (Dense): kernel_initializer names an unknown class; "
            "keras.initializers has no 'GlorotUniformX'"
            for fmt in FORMATS
        },
    ),
    (
        "kernel-size",
        "digits_cnn",
        _kernel_size,
        None,
        {
            fmt: "layer 'conv1' (Conv2D): config says kernel_size=[5, 5] but its kernel has shape (3, 3, 1, 32)"
            for fmt in FORMATS
        },
    ),
    (
        "removed-layer",
        "digits_mlp",
        _removed_layer,
        None,
        {fmt: "the file holds 2 weights for layer 'fc2', which the config does not have" for fmt in FORMATS},
    ),
    (
        "extra-weight",
        "digits_cnn",
        None,
        _extra_weight,
        {
            ".h5": "layer 'fc1' (Dense): config implies weights kernel, bias (use_bias=True) "
            "but the file holds kernel, bias, extra",
            ".keras": "layer 'fc1' (Dense): config implies weights kernel, bias (use_bias=True) "
            "but the file holds kernel, bias, vars/2",
        },
    ),
    (
        "missing-bias",
        "digits_cnn",
        None,
        _missing_bias,
        {
            fmt: "layer 'fc1' (Dense): config implies weights kernel, bias (use_bias=True) but the file holds kernel"
            for fmt in FORMATS
        },
    ),
    (
        "bn-mismatch",
        "digits_cnn",
        None,
        _bn_mismatch,
        {
            fmt: "layer 'bn1' (BatchNormalization): its gamma has shape (32,) but its moving_mean has shape (31,)"
            for fmt in FORMATS
        },
    ),
]


CASES += [
    (
        "dtype-without-class-name",
        "digits_cnn",
        _dtype_without_class_name,
        None,
        {fmt: "layer 'head' (Dense): dtype is a serialized object without a class_name" for fmt in FORMATS},
    ),
    (
        "tensor-without-dtype",
        "digits_cnn",
        _tensor_without_dtype,
        None,
        {fmt: "layer 'head' (Dense): an input tensor of its inbound_nodes lacks 'dtype'" for fmt in FORMATS},
    ),
    (
        "numeric-activation",
        "digits_cnn",
        _numeric_activation,
        None,
        {fmt: "layer 'fc1' (Dense): activation 7 is not a Keras activation" for fmt in FORMATS},
    ),
    (
        "dtype-key-renamed",
        "digits_cnn",
        _dtype_key_renamed,
        None,
        {
            fmt: "layer 'conv1' (Conv2D): dtype config key 'name_x' is not an argument of keras.DTypePolicy"
            for fmt in FORMATS
        },
    ),
    (
        "dtype-extra-key",
        "digits_cnn",
        _dtype_extra_key,
        None,
        {
            fmt: "layer 'conv1' (Conv2D): dtype config key 'kernel_size' is not an argument of keras.DTypePolicy"
            for fmt in FORMATS
        },
    ),
    (
        "short-kernel-size",
        "digits_cnn",
        _short_kernel_size,
        None,
        {
            fmt: "layer 'conv1' (Conv2D): config says kernel_size=[3] but its kernel has shape (3, 3, 1, 32)"
            for fmt in FORMATS
        },
    ),
    (
        "dropped-referenced-layer",
        "digits_cnn",
        _dropped_referenced_layer,
        None,
        {
            fmt: "layer 'flatten' (Flatten): its input names layer 'pool', which the config does not have"
            for fmt in FORMATS
        },
    ),
    (
        "legacy-nodes-dropped-layer",
        "digits_cnn",
        _legacy_nodes,
        None,
        {
            fmt: "layer 'flatten' (Flatten): its input names layer 'pool', which the config does not have"
            for fmt in FORMATS
        },
    ),
    (
        "output-names-missing-layer",
        "digits_cnn",
        _output_names_missing_layer,
        None,
        {
            fmt: "model 'digits_cnn' (Functional): its output_layers name layer 'head_x', "
            "which the config does not have"
            for fmt in FORMATS
        },
    ),
    (
        "conv-reads-the-image",
        "digits_cnn",
        _conv_reads_the_image,
        None,
        {
            fmt: "layer 'conv2' (Conv2D): its input's last axis has size 1 but its kernel has shape (3, 3, 32, 64), "
            "which takes 32"
            for fmt in FORMATS
        },
    ),
    (
        "dropped-flatten",
        "digits_mlp",
        _dropped_flatten,
        None,
        {
            fmt: "layer 'fc1' (Dense): its input's last axis has size 1 but its kernel has shape (64, 256), "
            "which takes 64"
            for fmt in FORMATS
        },
    ),
]


def crafted(tmp_path: Path, sample: str, fmt: str, config_edit, weights_edit) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / f"{sample}{fmt}"
    shutil.copy(SAMPLES / f"{sample}{fmt}", path)
    if config_edit is not None:
        edit_config(path, config_edit)
    if weights_edit is not None:
        edit_weights(path, weights_edit(fmt))
    return path


# --- the file engine refuses, and so does Keras ---------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_file_engine_refuses_disagreeing_file(tmp_path, case, fmt):
    _, sample, config_edit, weights_edit, whats = case
    path = crafted(tmp_path, sample, fmt, config_edit, weights_edit)
    before = snapshot(path.parent)
    result = invoke("prune", path, "--threshold", "0.05", "--engine", "file")
    assert_error(result, 1, f"Error: {path} is not a valid Keras model: {whats[fmt]}")
    assert snapshot(path.parent) == before


@pytest.mark.parametrize("fmt", FORMATS)
def test_report_refuses_it_too(tmp_path, fmt):
    _, sample, config_edit, weights_edit, whats = CASES[0]
    path = crafted(tmp_path, sample, fmt, config_edit, weights_edit)
    before = snapshot(path.parent)
    assert_error(invoke("report", path), 1, f"Error: {path} is not a valid Keras model: {whats[fmt]}")
    assert snapshot(path.parent) == before


# The file is broken on purpose; Keras may say so ("Skipping nested container ...") before it refuses it.
@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_keras_refuses_the_same_file(tmp_path, case, fmt):
    keras = pytest.importorskip("keras")
    _, sample, config_edit, weights_edit, _ = case
    path = crafted(tmp_path, sample, fmt, config_edit, weights_edit)
    with pytest.raises(Exception):  # noqa: B017 (Keras raises TypeError, ValueError or KeyError by case)
        keras.models.load_model(path, compile=False)


# --- edits Keras accepts still prune ---------------------------------------------------------------


def _tanh(config):
    _layer(config, "fc1")["config"]["activation"] = "tanh"


def _frozen(config):
    _layer(config, "conv2")["config"]["trainable"] = False


def _dropout(config):
    _layer(config, "drop")["config"]["rate"] = 0.25


def _ones_bias_initializer(config):
    _layer(config, "fc1")["config"]["bias_initializer"] = {
        "module": "keras.initializers",
        "class_name": "Ones",
        "config": {},
        "registered_name": None,
    }


VALID = [_tanh, _frozen, _dropout, _ones_bias_initializer]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("edit", VALID, ids=[e.__name__.strip("_") for e in VALID])
def test_valid_edit_still_prunes_and_loads(tmp_path, edit, fmt):
    keras = pytest.importorskip("keras")
    path = crafted(tmp_path, "digits_cnn", fmt, edit, None)
    output = tmp_path / f"out{fmt}"
    run("prune", path, "--threshold", "0.05", "--engine", "file", "-o", output)
    fc1 = keras.models.load_model(output, compile=False).get_layer("fc1")
    # Pruned by magnitude: exactly the entries under the threshold in the input are zero in Keras's reading.
    assert np.array_equal(fc1.kernel.numpy() == 0, np.abs(_original_kernel(path)) < 0.05)


def _original_kernel(path: Path) -> np.ndarray:
    with open_model_file(path) as model:
        entry = next(e for e in model.entries if e.layer == "fc1" and e.shape == (1024, 128))
        return model.read(entry)


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mlp", "regressor", "digits_transformer", "digits_lstm"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_sample_models_agree(name, fmt):
    with open_model_file(SAMPLES / f"{name}{fmt}") as model:
        assert list(disagreements(model)) == []


@pytest.mark.parametrize("name", ["sequential", "functional", "zoo"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_fixture_models_agree(models, name, fmt):
    with open_model_file(models / f"{name}{fmt}") as model:
        assert list(disagreements(model)) == []


def build_menagerie():
    """Layers the check must know or leave alone: nested models, wrappers, attention, switched-off weights."""
    keras = seeded_keras()
    seq = keras.Input((6, 4), name="seq")
    x = keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True), name="bi")(seq)
    x = keras.layers.TimeDistributed(keras.layers.Dense(4), name="td")(x)
    x = keras.layers.MultiHeadAttention(2, 3, name="mha")(x, x)
    x = keras.layers.LayerNormalization(name="ln")(x)
    x = keras.layers.SimpleRNN(5, return_sequences=True, name="rnn")(x)
    x = keras.layers.GRU(3, reset_after=False, return_sequences=True, name="gru")(x)
    x = keras.layers.Conv1DTranspose(4, 2, name="convt")(x)
    x = keras.layers.Conv1D(4, 1, activation="swish", name="conv1d")(x)
    x = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 2), bias_axes="d", name="einsum")(x)
    x = keras.layers.BatchNormalization(center=False, name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    inner = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(3, use_bias=False, name="inner_dense")], name="inner"
    )
    x = inner(keras.layers.GlobalAveragePooling1D(name="gap")(x))
    vol = keras.Input((4, 4, 4, 1), name="vol")
    v = keras.layers.Conv3DTranspose(2, 2, name="conv3dt")(vol)
    v = keras.layers.Conv3D(2, (2, 3, 4), name="conv3d")(v)
    v = keras.layers.SeparableConv1D(3, 2, depth_multiplier=2, name="sep1")(keras.layers.Reshape((-1, 2))(v))
    v = keras.layers.DepthwiseConv1D(2, depth_multiplier=3, name="dw1")(v)
    image = keras.Input((4, 4, 2), name="image")
    i = keras.layers.Conv2DTranspose(3, 2, use_bias=False, name="conv2dt")(image)
    i = keras.layers.BatchNormalization(renorm=True, name="bn_renorm")(i)
    i = keras.layers.GlobalMaxPooling2D()(i)
    out = keras.layers.Dense(1, name="out")(keras.layers.Concatenate()([x, keras.layers.Flatten()(v), i]))
    return keras.Model([seq, vol, image], out, name="menagerie")


@pytest.fixture(scope="module")
def menagerie(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("menagerie")
    model = build_menagerie()
    for fmt in FORMATS:
        model.save(folder / f"menagerie{fmt}")
    return folder


@pytest.mark.parametrize("fmt", FORMATS)
def test_menagerie_agrees(menagerie, fmt):
    with open_model_file(menagerie / f"menagerie{fmt}") as model:
        assert list(disagreements(model)) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_graph_operations_agree_only_where_keras_loads_them(tmp_path, fmt):
    keras = seeded_keras()
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="d")(keras.ops.relu(inputs)))
    path = tmp_path / f"ops{fmt}"
    model.save(path)
    with open_model_file(path) as opened:
        found = list(disagreements(opened))
    if fmt == ".keras":  # {"module": "keras.src.ops.nn", "class_name": "Relu"}
        assert found == []
        keras.models.load_model(path, compile=False)
    else:  # a legacy file names the op "Relu" alone, which Keras looks for in keras.layers
        assert found == ["layer 'relu' (Relu): unknown class; keras.layers has no 'Relu'"]
        with pytest.raises(ValueError, match="Relu"):
            keras.models.load_model(path, compile=False)


# (layer, config key, new value, the disagreement): each a size the layer table's weight_shapes fix.
RESIZED = [
    ("rnn", "units", 6, "layer 'rnn' (SimpleRNN): config says units=6 but its kernel has shape (4, 5)"),
    ("gru", "units", 4, "layer 'gru' (GRU): config says units=4 but its kernel has shape (5, 9)"),
    (
        "convt",
        "filters",
        5,
        "layer 'convt' (Conv1DTranspose): config says filters=5 but its kernel has shape (2, 4, 3)",
    ),
    ("conv1d", "filters", 3, "layer 'conv1d' (Conv1D): config says filters=3 but its kernel has shape (1, 4, 4)"),
    (
        "conv3d",
        "kernel_size",
        [1, 3, 3],
        "layer 'conv3d' (Conv3D): config says kernel_size=[1, 3, 3] but its kernel has shape (2, 3, 4, 2, 2)",
    ),
    (
        "sep1",
        "depth_multiplier",
        1,
        "layer 'sep1' (SeparableConv1D): config says depth_multiplier=1 but its depthwise_kernel has shape (2, 2, 2)",
    ),
    (
        "dw1",
        "depth_multiplier",
        2,
        "layer 'dw1' (DepthwiseConv1D): config says depth_multiplier=2 but its kernel has shape (2, 3, 3)",
    ),
    (
        "bn",
        "center",
        True,
        "layer 'bn' (BatchNormalization): config implies weights gamma, beta, moving_mean, moving_variance "
        "(center=True, renorm=False, scale=True) but the file holds gamma, moving_mean, moving_variance",
    ),
    (
        "conv2dt",
        "filters",
        4,
        "layer 'conv2dt' (Conv2DTranspose): config says filters=4 but its kernel has shape (2, 2, 3, 2)",
    ),
    (
        "bn_renorm",
        "renorm",
        False,
        "layer 'bn_renorm' (BatchNormalization): config implies weights gamma, beta, moving_mean, moving_variance "
        "(center=True, renorm=False, scale=True) but the file holds gamma, beta, moving_mean, moving_variance, "
        "moving_stddev, renorm_mean, renorm_stddev",
    ),
    (
        "inner_dense",
        "units",
        4,
        "layer 'inner_dense' (Dense): config says units=4 but its kernel has shape (2, 3)",
    ),
]


def _find(config: dict, name: str) -> dict:
    for layer in config["config"].get("layers", []):
        if layer["config"].get("name") == name:
            return layer
        if "layers" in layer["config"]:
            try:
                return _find(layer, name)
            except StopIteration:
                pass
    raise StopIteration(name)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layer, key, value, what", RESIZED, ids=[r[0] for r in RESIZED])
def test_menagerie_resized_disagrees(menagerie, tmp_path, fmt, layer, key, value, what):
    path = tmp_path / f"menagerie{fmt}"
    shutil.copy(menagerie / path.name, path)
    edit_config(path, lambda config: _find(config, layer)["config"].__setitem__(key, value))
    with open_model_file(path) as model:
        found = list(disagreements(model))
    if fmt == ".keras":  # positions, not names: the weight a .keras file holds where a bias would be is vars/1
        what = what.replace("holds gamma, moving_mean, moving_variance", "holds gamma, beta, moving_mean")
        what = what.replace("moving_stddev, renorm_mean, renorm_stddev", "vars/4, vars/5, vars/6")
    assert found[:1] == [what]


# --- the source reading matches the imported Keras --------------------------------------------------


def _layer_classes(keras) -> list[str]:
    return sorted(
        name
        for name in dir(keras.layers)
        if isinstance(getattr(keras.layers, name), type) and issubclass(getattr(keras.layers, name), keras.layers.Layer)
    )


def _accepted_by_inspection(cls) -> set[str] | None:
    """The keys ``cls(**config)`` accepts, from ``inspect`` and each ``__init__``'s source text.

    Walks the classes in method resolution order: each ``__init__``'s named parameters and
    the keys it pops from ``**kwargs``; on to the next class only where it passes
    ``**kwargs`` on, and None (anything goes) where it neither passes them on nor raises on them.
    """
    keys: set[str] = set()
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if klass is object:  # object() takes no keyword at all
            return keys
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        keys |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        var = next((p.name for p in params if p.kind == p.VAR_KEYWORD), None)
        if var is None:
            return keys
        source = inspect.getsource(init)
        keys |= set(re.findall(rf"{var}\.(?:pop|get)\(\s*[\"'](\w+)[\"']", source))
        keys |= set(re.findall(rf"{var}\[[\"'](\w+)[\"']\]", source))
        if len(re.findall(rf"\*\*{var}\b", source)) < 2:  # once in the signature: never passed on
            return keys if re.search(rf"if {var}:\s*\n\s*raise", source) else None
    return keys


def test_accepted_keys_match_keras_for_every_layer_class():
    keras = pytest.importorskip("keras")
    names = _layer_classes(keras)
    assert len(names) > 100  # the reading found keras.layers at all
    wrong = []
    for name in names:
        cls = getattr(keras.layers, name)
        expected = _accepted_by_inspection(cls)
        read = keras_api.accepted_keys("keras.layers", name)
        # A from_config of the class may read extra keys from the config before it calls the constructor.
        extra = set(read or ()) - set(expected or ())
        from_config = inspect.getsource(vars(cls)["from_config"]) if "from_config" in vars(cls) else ""
        if (expected is None) != (read is None) or (
            expected is not None and (expected - set(read or ()) or any(f'"{k}"' not in from_config for k in extra))
        ):
            wrong.append(f"{name}: inspection {sorted(expected or ['ANY'])} vs source {sorted(read or ['ANY'])}")
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize(
    "cls, config, key, value",
    [
        ("Dense", {"units": 3}, "input_shape", [4]),  # popped by Layer
        ("Embedding", {"input_dim": 5, "output_dim": 2}, "input_length", 3),  # popped by Embedding
        ("LeakyReLU", {}, "alpha", 0.2),  # the Keras 2 name, popped by LeakyReLU
        ("LSTM", {"units": 2}, "implementation", 2),
    ],
)
def test_keys_read_from_source_are_accepted_by_from_config(cls, config, key, value):
    keras = pytest.importorskip("keras")
    assert key in keras_api.accepted_keys("keras.layers", cls)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the legacy keys are the point: Keras warns that they are
        getattr(keras.layers, cls).from_config({**config, key: value})


@pytest.mark.parametrize("cls, config", [("Dense", {"units": 3}), ("Conv2D", {"filters": 2, "kernel_size": 3})])
def test_a_key_not_read_from_source_is_refused_by_from_config(cls, config):
    keras = pytest.importorskip("keras")
    assert "unitz" not in keras_api.accepted_keys("keras.layers", cls)
    with pytest.raises(Exception, match="unitz"):
        getattr(keras.layers, cls).from_config({**config, "unitz": 1})


def test_activation_names_match_keras():
    pytest.importorskip("keras")
    from keras.src.activations import ALL_OBJECTS_DICT

    assert keras_api.activation_names() == set(ALL_OBJECTS_DICT)


def test_public_names_match_keras():
    pytest.importorskip("keras")
    for module in ("keras.layers", "keras.initializers", "keras.regularizers", "keras.constraints", "keras"):
        names = keras_api.module_names(module)
        imported = __import__(module, fromlist=["_"])
        public = {n for n in dir(imported) if not n.startswith("_") and n != "src"}  # src: set by importing it
        assert names is not None and public <= names, (module, sorted(public - (names or set())))
    assert keras_api.module_names("keras.no_such_module") == frozenset()


# --- every keras.applications family, saved by Keras in both formats --------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_load("applications_table").SIZES))
def test_keras_applications_agree(tmp_path, name):
    keras = seeded_keras()
    side = _load("applications_table").SIZES[name]
    model = getattr(keras.applications, name)(weights=None, input_shape=(side, side, 3), classes=10)
    for fmt in FORMATS:
        path = tmp_path / f"{name}{fmt}"
        model.save(path)
        with open_model_file(path) as opened:
            assert list(disagreements(opened)) == [], fmt


@pytest.mark.parametrize("module", ["initializers", "regularizers", "constraints", "dtype_policies"])
def test_accepted_keys_match_keras_for_nested_object_classes(module):
    keras = pytest.importorskip("keras")
    namespace = getattr(keras, module)
    names = sorted(n for n in dir(namespace) if isinstance(getattr(namespace, n), type) and n[0].isupper())
    assert names  # the namespace lists classes at all
    wrong = []
    for name in names:
        cls = getattr(namespace, name)
        expected = _accepted_by_inspection(cls)
        read = keras_api.accepted_keys(f"keras.{module}", name)
        extra = set(read or ()) - set(expected or ())
        from_config = inspect.getsource(vars(cls)["from_config"]) if "from_config" in vars(cls) else ""
        if (expected is None) != (read is None) or (
            expected is not None and (expected - set(read or ()) or any(f'"{k}"' not in from_config for k in extra))
        ):
            wrong.append(f"{name}: inspection {sorted(expected or ['ANY'])} vs source {sorted(read or ['ANY'])}")
    assert wrong == [], "\n".join(wrong)
