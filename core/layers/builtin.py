"""The built-in entries of the layer table: the Keras layer classes prunectl knows.

Kernels are created before biases in every layer's ``build()``, so a kernel's
position in the variable list does not depend on ``use_bias``. Recurrent layers
keep their weights in a ``cell`` sub-layer. Every entry here is checked against
the layer's real variables by ``tests/test_layer_table.py``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from prunectl.core.layers.spec import Inner, LayerSpec, Rule, WeightShape, WeightSpec, op_key


def last_axis_check(key: str) -> Callable[[dict, int], str | None]:
    """A rule check refusing a layer whose ``config[key]`` axis is not the channel (last) axis."""

    def check(config: dict, rank: int) -> str | None:
        axis = config.get(key, -1)
        axes = axis if isinstance(axis, (list, tuple)) else [axis]
        if [a % rank for a in axes] != [rank - 1]:
            return f"{key}={axis} is not the channel axis"
        return None

    return check


def group_norm_check(config: dict, rank: int) -> str | None:
    """Refuses a GroupNormalization over another axis, or with groups that removing channels would split."""
    reason = last_axis_check("axis")(config, rank)
    if reason:
        return reason
    # With one group (or one per channel) any channel count still divides; with G groups a removed
    # channel would move every later channel into another group's statistics.
    if config.get("groups") not in (1, -1):
        return f"groups={config.get('groups')}: removing channels would regroup the channels it normalizes together"
    return None


def conv_check(config: dict, rank: int) -> str | None:
    """Refuses grouped convolutions, whose kernels do not see every input channel."""
    if config.get("groups", 1) != 1:
        return f"grouped convolution (groups={config['groups']})"
    return None


def depthwise_check(config: dict, rank: int) -> str | None:
    """Refuses depthwise convolutions that multiply the channel count."""
    if config.get("depth_multiplier", 1) != 1:
        return f"depth_multiplier={config['depth_multiplier']}"
    return None


def activation_check(config: dict, rank: int = 0) -> str | None:
    """Why an activation couples all channels (softmax normalizes over them), or None."""
    if config.get("activation") in ("softmax", "log_softmax"):
        return f"{config['activation']} normalizes over the channels"
    return None


def keras_applications_check(*keys: str) -> Callable[[dict, int], str | None]:
    """A rule check refusing a same-named class whose config lacks the keys of keras.applications' own."""

    def check(config: dict, rank: int) -> str | None:
        missing = [key for key in keys if key not in config]
        return f"not the keras.applications layer (no {', '.join(missing)} in its config)" if missing else None

    return check


def einsum_inputs(shape: tuple[int, ...], config: dict | None) -> tuple[int, ...] | None:
    """An EinsumDense kernel's input axes: its letters that the input has and the output lacks.

    Example:
        >>> einsum_inputs((8, 2, 4), {"equation": "abc,cde->abde"})
        (0,)
    """
    equation = str((config or {}).get("equation") or "").replace(" ", "")
    match = re.fullmatch(r"([a-z.]+),([a-z]+)->([a-z.]+)", equation)
    if not match or len(match.group(2)) != len(shape):
        return None
    inputs, kernel, output = match.groups()
    axes = tuple(i for i, letter in enumerate(kernel) if letter in inputs and letter not in output)
    return axes or None


def spatial_inputs(shape: tuple[int, ...], config: dict | None) -> tuple[int, ...] | None:
    """A depthwise kernel ``(*kernel_size, channels, multiplier)`` sums over the window alone."""
    return tuple(range(len(shape) - 2)) or None


def transpose_inputs(shape: tuple[int, ...], config: dict | None) -> tuple[int, ...] | None:
    """A transposed convolution's kernel ``(*kernel_size, filters, in_channels)`` sums over the window and its input."""
    return (*range(len(shape) - 2), len(shape) - 1) if len(shape) >= 3 else None


def no_inputs(shape: tuple[int, ...], config: dict | None) -> None:
    """A lookup table (an embedding) multiplies nothing: it has no input axes."""
    return None


_KERNEL = (WeightSpec("kernel", 0),)
_RNN = (WeightSpec("kernel", 0, "cell"), WeightSpec("recurrent_kernel", 1, "cell"))
_SEPARABLE_WEIGHTS = (WeightSpec("depthwise_kernel", 0, inputs=spatial_inputs), WeightSpec("pointwise_kernel", 1))

_DENSE = Rule("producer", "units", (("kernel", 0, None),), (("kernel", -1), ("bias", 0)), "dense")
_CONV = Rule("producer", "filters", (("kernel", -2, None),), (("kernel", -1), ("bias", 0)), "conv", conv_check)
_TRANSPOSE = Rule("producer", "filters", (("kernel", -1, None),), (("kernel", -2), ("bias", 0)), "transpose")
_SEPARABLE = Rule(
    "producer",
    "filters",
    (("depthwise_kernel", -2, None), ("pointwise_kernel", -2, "depth_multiplier")),
    (("pointwise_kernel", -1), ("bias", 0)),
    "separable",
)
_DEPTHWISE = Rule("passthrough", in_axes=(("kernel", -2, None), ("bias", 0, None)), check=depthwise_check)


def _kernel_dims(rank: int, channels: tuple[tuple[int, str], ...]) -> tuple[tuple[int, str], ...]:
    """A convolution kernel's sizes: ``kernel_size`` on the spatial axes, then ``channels``."""
    return tuple((axis, f"kernel_size[{axis}]") for axis in range(rank)) + channels


_BIAS = WeightShape("bias", ((0, "filters"),), when="use_bias")


def _conv_shapes(rank: int) -> tuple[WeightShape, ...]:
    return (WeightShape("kernel", _kernel_dims(rank, ((-1, "filters"),))), _BIAS)


def _transpose_shapes(rank: int) -> tuple[WeightShape, ...]:
    return (WeightShape("kernel", _kernel_dims(rank, ((-2, "filters"),))), _BIAS)


def _depthwise_shapes(rank: int) -> tuple[WeightShape, ...]:
    kernel = WeightShape("kernel", _kernel_dims(rank, ((-2, "@in"), (-1, "depth_multiplier"))))
    return (kernel, WeightShape("bias", when="use_bias"))


def _separable_shapes(rank: int) -> tuple[WeightShape, ...]:
    return (
        WeightShape("depthwise_kernel", _kernel_dims(rank, ((-2, "@in"), (-1, "depth_multiplier")))),
        WeightShape("pointwise_kernel", tuple((a, "1") for a in range(rank)) + ((-1, "filters"),)),
        _BIAS,
    )


def _rnn_shapes(gates: int) -> tuple[WeightShape, ...]:
    width = f"units*{gates}" if gates > 1 else "units"
    return (
        WeightShape("kernel", ((-1, width),), sublayer="cell"),
        WeightShape("recurrent_kernel", ((0, "units"), (-1, width)), sublayer="cell"),
        WeightShape("bias", ((-1, width),), when="use_bias", sublayer="cell"),
    )


def _rnn_rule(gates: int) -> Rule:
    """A recurrent layer's units: its kernel's rows read the input's channels; each unit owns a column
    in every gate (gate-major, ``[i|f|c|o]`` for LSTM) of the kernel, recurrent kernel and bias, and
    its row of the recurrent kernel (its state, fed back)."""
    return Rule(
        "producer",
        "units",
        (("kernel", 0, None),),
        (("kernel", -1, gates), ("recurrent_kernel", -1, gates), ("recurrent_kernel", 0), ("bias", -1, gates)),
    )


# Both kernels are applied once per time step (the input's positions).
_RNN_MACS = {"kernel": "input", "recurrent_kernel": "input"}

_ATTENTION_DENSE = ("query_dense", "key_dense", "value_dense", "output_dense")
# A head is one index of the heads axis of the query/key/value kernels (in, heads, dim) and
# their biases (heads, dim), and the first axis of the output kernel (heads, dim, out).
_HEADS = Inner(
    "heads",
    "num_heads",
    tuple((f"{d}/{w}", 1 if w == "kernel" else 0) for d in _ATTENTION_DENSE[:3] for w in ("kernel", "bias"))
    + (("output_dense/kernel", 0),),
    observe=("output_dense", -2),
)


def attention_macs(shapes: list[tuple[str, tuple[int, ...]]], in_shape: tuple, out_shape: tuple) -> int:
    """A MultiHeadAttention call's multiply-adds: the four projections, then the score and context products.

    Keys are counted at the query's length (exact for self-attention, the usual case).
    """
    kernels = [shape for name, shape in shapes if name == "kernel"]
    if len(kernels) != 4:
        return 0
    length = math.prod(int(d or 1) for d in in_shape[1:-1])
    query, _, value, _ = kernels
    projections = length * sum(math.prod(k) for k in kernels)
    # Scores: each query position against each key, over heads * key_dim; context: over heads * value_dim.
    return projections + length * length * (math.prod(query[1:]) + math.prod(value[1:]))


def attention_check(config: dict, rank: int) -> str | None:
    """Refuses an attention layer whose output width is not its query's (``output_shape`` set)."""
    if config.get("output_shape") is not None:
        return f"output_shape={config['output_shape']} is not its query's width"
    return None


# With --prune-residual, attention passes its query's channels through: they index the first axis of the
# query/key/value kernels and the last of the output projection (kernel and bias).
_ATTENTION_RESIDUAL = Rule(
    "passthrough",
    in_axes=tuple((f"{d}/kernel", 0, None) for d in _ATTENTION_DENSE[:3])
    + (("output_dense/kernel", -1, None), ("output_dense/bias", -1, None)),
    check=attention_check,
    residual=True,
)

_BN_SHAPES = (
    WeightShape("gamma", ((0, "@channels"),), when="scale"),
    WeightShape("beta", ((0, "@channels"),), when="center"),
    WeightShape("moving_mean", ((0, "@channels"),)),
    WeightShape("moving_variance", ((0, "@channels"),)),
    WeightShape("moving_stddev", ((0, "@channels"),), when="renorm"),
    WeightShape("renorm_mean", ((0, "@channels"),), when="renorm"),
    WeightShape("renorm_stddev", ((0, "@channels"),), when="renorm"),
)
_NORM_PARAMS = tuple((w, 0, None) for w in ("gamma", "beta", "moving_mean", "moving_variance"))
_PASS = LayerSpec(rule=Rule("passthrough"))

# Graph operations (keras.ops on symbolic tensors). Every one here is elementwise, so
# a channel kept or dropped stays where it is; a constant argument wider than a scalar
# is refused in structure.graph (it would keep its old width in the rebuilt model).
_ELEMENTWISE_BINARY = (
    "Add",
    "Subtract",
    "Multiply",
    "Divide",
    "TrueDivide",
    "Maximum",
    "Minimum",
    "Power",
)
_ELEMENTWISE_UNARY = (
    "Relu",
    "Relu6",
    "Sigmoid",
    "HardSigmoid",
    "Silu",
    "HardSilu",
    "Gelu",
    "Elu",
    "Selu",
    "Celu",
    "LeakyRelu",
    "Softplus",
    "Softsign",
    "SparsePlus",
    "HardTanh",
    "LogSigmoid",
    "Tanh",
    "Exp",
    "Log",
    "Absolute",
    "Square",
    "Sqrt",
    "Negative",
    "Reciprocal",
    "Sign",
    "Erf",
    "Clip",
    "Cast",
    "Copy",
    "StopGradient",
)
OPS: dict[str, LayerSpec] = {
    **{op_key(name): LayerSpec(rule=Rule("merge")) for name in _ELEMENTWISE_BINARY},
    **{op_key(name): _PASS for name in _ELEMENTWISE_UNARY},
}

BUILTIN: dict[str, LayerSpec] = {
    "Dense": LayerSpec(
        _KERNEL,
        _DENSE,
        {"kernel": "output"},
        foldable=True,
        weight_shapes=(
            WeightShape("kernel", ((-1, "units"),)),
            WeightShape("bias", ((0, "units"),), when="use_bias"),
        ),
    ),
    "EinsumDense": LayerSpec(
        (WeightSpec("kernel", 0, inputs=einsum_inputs),),
        weight_shapes=(WeightShape("kernel"), WeightShape("bias", when="bias_axes")),
    ),
    **{
        f"Conv{d}D": LayerSpec(_KERNEL, _CONV, {"kernel": "output"}, foldable=True, weight_shapes=_conv_shapes(d))
        for d in (1, 2, 3)
    },
    **{
        f"Conv{d}DTranspose": LayerSpec(
            (WeightSpec("kernel", 0, inputs=transpose_inputs),),
            _TRANSPOSE,
            {"kernel": "input"},
            weight_shapes=_transpose_shapes(d),
        )
        for d in (1, 2, 3)
    },
    **{
        f"DepthwiseConv{d}D": LayerSpec(
            (WeightSpec("kernel", 0, inputs=spatial_inputs),),
            _DEPTHWISE,
            {"kernel": "output"},
            weight_shapes=_depthwise_shapes(d),
        )
        for d in (1, 2)
    },
    **{
        f"SeparableConv{d}D": LayerSpec(
            _SEPARABLE_WEIGHTS,
            _SEPARABLE,
            {"depthwise_kernel": "output", "pointwise_kernel": "output"},
            weight_shapes=_separable_shapes(d),
        )
        for d in (1, 2)
    },
    "MultiHeadAttention": LayerSpec(
        sublayers=dict.fromkeys(_ATTENTION_DENSE, "EinsumDense"),
        rule=_ATTENTION_RESIDUAL,
        inner=(_HEADS,),
        macs=attention_macs,
    ),
    "Embedding": LayerSpec(
        (WeightSpec("embeddings", 0, inputs=no_inputs),),
        # A producer of the residual stream's channels, pruned only with --prune-residual.
        rule=Rule("producer", "output_dim", out_axes=(("embeddings", 1),), residual=True),
        weight_shapes=(WeightShape("embeddings", ((0, "input_dim"), (1, "output_dim"))),),
    ),
    **{
        name: LayerSpec(_RNN, _rnn_rule(gates), _RNN_MACS, weight_shapes=_rnn_shapes(gates))
        for name, gates in (("SimpleRNN", 1), ("GRU", 3), ("LSTM", 4))
    },
    "BatchNormalization": LayerSpec(
        rule=Rule("passthrough", in_axes=_NORM_PARAMS, axis="axis"), weight_shapes=_BN_SHAPES
    ),
    "LayerNormalization": LayerSpec(rule=Rule("normalize", in_axes=_NORM_PARAMS[:2], check=last_axis_check("axis"))),
    "GroupNormalization": LayerSpec(rule=Rule("normalize", in_axes=_NORM_PARAMS[:2], check=group_norm_check)),
    "RMSNormalization": LayerSpec(rule=Rule("normalize", in_axes=(("scale", 0, None),), check=last_axis_check("axis"))),
    "UnitNormalization": LayerSpec(rule=Rule("normalize", check=last_axis_check("axis"))),
    "Activation": LayerSpec(rule=Rule("passthrough", check=activation_check)),
    **{
        name: _PASS
        for name in (
            "ReLU",
            "LeakyReLU",
            "ELU",
            "Dropout",
            "SpatialDropout1D",
            "SpatialDropout2D",
            "SpatialDropout3D",
            "GaussianNoise",
            "GaussianDropout",
            "AlphaDropout",
            "ActivityRegularization",
            "Identity",
        )
    },
    **{
        f"{op}{d}D": _PASS
        for op in (
            "MaxPooling",
            "AveragePooling",
            "GlobalMaxPooling",
            "GlobalAveragePooling",
            "ZeroPadding",
            "Cropping",
            "UpSampling",
        )
        for d in (1, 2, 3)
    },
    "Flatten": LayerSpec(rule=Rule("flatten")),
    "Reshape": LayerSpec(rule=Rule("reshape")),
    **{
        name: LayerSpec(rule=Rule("merge")) for name in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
    },
    "Concatenate": LayerSpec(rule=Rule("concat")),
    **{name: LayerSpec(nested_model=True) for name in ("Sequential", "Functional", "Model")},
    # keras.applications' own helper layers (ConvNeXt, InceptionResNetV2).
    "LayerScale": LayerSpec(
        rule=Rule(
            "passthrough",
            in_axes=(("variable", 0, None),),  # its gamma, created without a name
            check=keras_applications_check("init_values", "projection_dim"),
            width="projection_dim",
        )
    ),
    "StochasticDepth": LayerSpec(rule=Rule("passthrough", check=keras_applications_check("drop_path_rate"))),
    "CustomScaleLayer": LayerSpec(rule=Rule("merge", check=keras_applications_check("scale"))),
    **OPS,
}
