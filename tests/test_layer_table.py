"""Every entry of the layer table against the real Keras layer it describes.

Each listed class is built on a small input; its spec must name variables the
layer really has: prunable weights at the stated position of the stated
sub-layer, rule axes whose lengths are the layer's channel counts, MAC weights.
"""

from __future__ import annotations

import re

import pytest

from prunectl.core.layers import specs
from prunectl.core.layers.builtin import BUILTIN

# Constructor arguments where the defaults do not build a layer (or hide an axis worth checking).
ARGS = {
    "Dense": (4,),
    "EinsumDense": ("ab,bc->ac",),
    **{f"Conv{d}D": (4, 3) for d in (1, 2, 3)},
    **{f"Conv{d}DTranspose": (4, 3) for d in (1, 2, 3)},
    **{f"DepthwiseConv{d}D": (3,) for d in (1, 2)},
    **{f"SeparableConv{d}D": (4, 3) for d in (1, 2)},
    "Embedding": (10, 4),
    "MultiHeadAttention": (2, 3),
    **{name: (4,) for name in ("SimpleRNN", "GRU", "LSTM")},
    "Activation": ("relu",),
    **{
        name: (0.5,)
        for name in (
            "Dropout",
            "SpatialDropout1D",
            "SpatialDropout2D",
            "SpatialDropout3D",
            "GaussianNoise",
            "GaussianDropout",
            "AlphaDropout",
        )
    },
    "Reshape": ((6,),),
    **{f"AveragePooling{d}D": (2,) for d in (1, 2, 3)},
}
KWARGS = {
    "EinsumDense": {"output_shape": 4},
    **{f"SeparableConv{d}D": {"depth_multiplier": 2} for d in (1, 2)},
    "GroupNormalization": {"groups": 1},
}
MERGES = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "CustomScaleLayer")
# keras.applications' own helper layers, with the module that defines each.
APPLICATION_LAYERS = {
    "LayerScale": "convnext",
    "StochasticDepth": "convnext",
    "CustomScaleLayer": "inception_resnet_v2",
}
ARGS.update({"LayerScale": (1e-6, 6), "StochasticDepth": (0.1,), "CustomScaleLayer": (0.2,)})
# Operation rules (keys "ops.<Class>") are checked against keras.ops in tests/test_structure_ops.py.
# Keras' own classes; keras_hub's entries are checked against keras_hub's layers in tests/test_hub_*.py.
LAYER_CLASSES = sorted(
    name for name, spec in specs().items() if not spec.nested_model and not name.startswith("ops.") and name in BUILTIN
)


def _input_shape(class_name: str) -> tuple:
    if class_name in ("Embedding",):
        return (5,)
    if class_name in ("SimpleRNN", "GRU", "LSTM", "MultiHeadAttention"):
        return (5, 3)
    for d, shape in (("1D", (6, 3)), ("2D", (6, 6, 3)), ("3D", (4, 4, 4, 3))):
        if d in class_name:
            return shape
    return (6,)


def _build(class_name: str):
    import keras

    if class_name in APPLICATION_LAYERS:
        import importlib

        module = importlib.import_module(f"keras.src.applications.{APPLICATION_LAYERS[class_name]}")
        cls = getattr(module, class_name)
    else:
        cls = getattr(keras.layers, class_name)
    layer = cls(*ARGS.get(class_name, ()), **KWARGS.get(class_name, {}))
    shape = _input_shape(class_name)
    x = keras.Input(shape, dtype="int32" if class_name == "Embedding" else "float32")
    y = layer([x, x]) if class_name in MERGES else layer(x, x) if class_name == "MultiHeadAttention" else layer(x)
    return layer, x, y


def _own(layer, sublayer: str):
    for part in filter(None, sublayer.split("/")):
        layer = getattr(layer, part)
    return layer


@pytest.mark.parametrize("class_name", LAYER_CLASSES)
def test_spec_matches_the_layers_variables(class_name):
    spec = specs()[class_name]
    layer, x, y = _build(class_name)
    assert layer.__class__.__name__ == class_name
    for weight in spec.prunable:
        owner = _own(layer, weight.sublayer)
        variable = owner.weights[weight.index]
        assert variable.name == weight.name, (weight, [v.name for v in owner.weights])
        if weight.sublayer:
            assert variable.path == f"{layer.name}/{owner.name}/{weight.name}"
        else:
            assert variable.path == f"{layer.name}/{weight.name}"
    for path, class_name_inside in spec.sublayers.items():
        assert _own(layer, path).__class__.__name__ == class_name_inside, path
    config = layer.get_config()
    for inner in spec.inner:
        count = config[inner.count] // inner.per_unit
        for path, axis in inner.slices:
            *owner, variable = path.split("/")
            found = [v for v in _own(layer, "/".join(owner)).weights if v.name == variable]
            assert len(found) == 1 and found[0].shape[axis] == count, (path, axis)
    # Keras names an unnamed variable "variable", then "variable_1", ... (LayerScale's gamma).
    by_name = {re.sub(r"^variable_\d+$", "variable", v.name): v for v in layer.weights}
    assert set(spec.mac_weights) <= set(by_name), (spec.mac_weights, sorted(by_name))
    rule = spec.rule
    if rule is None:
        return
    config = layer.get_config()
    assert rule.check is None or rule.check(config, len(x.shape)) is None
    in_channels, out_channels = x.shape[-1], y.shape[-1]
    if rule.kind == "producer":
        assert config[rule.units] == out_channels
    elif rule.kind in ("passthrough", "normalize", "reshape", "merge"):
        assert in_channels == out_channels
    for name, axis, block_key in rule.in_axes:
        per_channel = config[block_key] if block_key else 1
        assert _weight(layer, by_name, name).shape[axis] == in_channels * per_channel, (name, axis)
    for name, axis, *gates in rule.out_axes:
        assert _weight(layer, by_name, name).shape[axis] == out_channels * (gates[0] if gates else 1), (name, axis)


def _weight(layer, by_name: dict, path: str):
    """A rule's weight: by name, or by weight path (``"output_dense/kernel"``: the sub-layer's own variable)."""
    if "/" not in path:
        return by_name[path]
    *owner, variable = path.split("/")
    (found,) = [v for v in _own(layer, "/".join(owner)).weights if v.name == variable]
    return found


def test_nested_model_entries_are_the_model_classes():
    import keras

    inputs = keras.Input((3,))
    functional = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    sequential = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    nested = {name for name, spec in specs().items() if spec.nested_model}
    assert nested == {functional.__class__.__name__, sequential.__class__.__name__, keras.Model.__name__}
