"""An independent channel tracer for the dead-channel invariance checks (tests only; never imports prunectl.core).

It walks a Keras functional model's nodes by itself and gives every channel of
every tensor a label. Producers (Conv/Dense/SeparableConv) create labels;
per-channel layers keep them; Add/Multiply/... union them position-wise;
Concatenate on the channel axis joins them. Labels that come from the model
input, reach a model output, or pass a layer this tracer does not understand
are *fixed*.

Beside the labels it tracks, per channel, whether the value is exactly zero
once the channel's producers (and the BatchNormalization/DepthwiseConv layers
it passes) are zeroed: an activation with ``f(0) != 0`` (a sigmoid, ``x + 3``)
breaks that, a BatchNormalization with gamma = beta = 0 restores it, and a
product is zero when either factor is. A label may be killed only when it is
zero wherever a Conv/Dense reads it, so removing it changes no output.

:func:`kill_channels` then zeroes a seeded subset of the killable labels and
returns, per producer, the output-channel indices that are now dead: what a
structural pruner must remove, and nothing else.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import keras
import numpy as np

PRODUCERS = {"Conv1D", "Conv2D", "Conv3D", "Dense", "SeparableConv1D", "SeparableConv2D"}
PER_CHANNEL = {
    "Activation", "ReLU", "LeakyReLU", "ELU", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "ZeroPadding1D",
    "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D",
    "UpSampling3D", "Identity", "Rescaling", "Reshape",
}  # fmt: skip
MERGES = {"Add": "and", "Subtract": "and", "Average": "and", "Maximum": "and", "Minimum": "and", "Multiply": "or"}
MERGES["CustomScaleLayer"] = "and"  # InceptionResNetV2's x + scale * y
# keras.ops nodes (``x + 3.0``, ``x * gate``): elementwise with a scalar, or between two tensors.
OP_ELEMENTWISE = {"Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum"}
OP_MERGES = {"Add": "and", "Subtract": "and", "Multiply": "or", "Maximum": "and", "Minimum": "and"}
OP_UNARY = {"Relu", "Relu6", "Sigmoid", "HardSigmoid", "Silu", "HardSilu", "Gelu", "Tanh", "Negative", "Absolute"}


class _UnionFind:
    def __init__(self):
        self.parent: list[int] = []

    def fresh(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n)

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class Trace:
    """What the tracer learned about one model.

    Attributes:
        model: the traced model.
        uf: the union-find over channel labels.
        producers: per producer layer name, the label of each output channel.
        zero_sites: per BatchNormalization/DepthwiseConv layer name, the label of each channel it carries.
        fixed: labels that may not be removed (model input or output, or an unknown layer's).
        not_zero: labels some Conv/Dense reads where they would not be exactly zero once killed.
        unknown: names of the layers the tracer did not understand (their channels are fixed).
    """

    model: object
    uf: _UnionFind
    producers: dict[str, np.ndarray] = field(default_factory=dict)
    zero_sites: dict[str, np.ndarray] = field(default_factory=dict)
    fixed: set[int] = field(default_factory=set)
    not_zero: set[int] = field(default_factory=set)
    unknown: list[str] = field(default_factory=list)

    def killable(self) -> dict[frozenset, list[int]]:
        """Root labels that may be killed, by the set of producers that make them."""
        fixed = {self.uf.find(a) for a in self.fixed} | {self.uf.find(a) for a in self.not_zero}
        groups: dict[frozenset, set[int]] = defaultdict(set)
        made_by: dict[int, set[str]] = defaultdict(set)
        for name, labels in self.producers.items():
            for label in labels:
                made_by[self.uf.find(int(label))].add(name)
        for root, names in made_by.items():
            groups[frozenset(names)].add(root)
        return {names: sorted(r for r in roots if r not in fixed) for names, roots in groups.items()}


def _last(tensor) -> int:
    return int(tensor.shape[-1])


def _zeros(tensor) -> np.ndarray:
    return np.zeros((1, *[d or 1 for d in tensor.shape[1:]]), dtype="float32")


def _zero_at_zero(values, channels: int) -> np.ndarray:
    """Per channel: whether every value of that channel is exactly zero."""
    values = np.asarray(keras.ops.convert_to_numpy(values)).reshape(-1, channels)
    return np.all(values == 0, axis=0)


def _activation_keeps_zero(layer) -> bool:
    activation = getattr(layer, "activation", None)
    if activation is None:
        return True
    return bool(_zero_at_zero(activation(np.zeros((1, 2), "float32")), 2).all())


def trace(model) -> Trace:
    """Label every channel of ``model``'s tensors (see the module docstring)."""
    uf = _UnionFind()
    result = Trace(model, uf)
    labels: dict[int, np.ndarray] = {}
    zero: dict[int, np.ndarray] = {}
    calls: dict[int, int] = defaultdict(int)
    nodes = [n for depth in sorted(model._nodes_by_depth, reverse=True) for n in model._nodes_by_depth[depth]]
    for node in nodes:
        calls[id(node.operation)] += 1

    def fresh(tensor, fixed: bool) -> None:
        labels[id(tensor)] = uf.fresh(_last(tensor))
        zero[id(tensor)] = np.zeros(_last(tensor), bool)
        if fixed:
            result.fixed.update(int(a) for a in labels[id(tensor)])

    def unknown(node) -> None:
        result.unknown.append(node.operation.name)
        for tensor in node.input_tensors:
            result.fixed.update(int(a) for a in labels[id(tensor)])
        for tensor in node.output_tensors:
            fresh(tensor, fixed=True)

    def read(tensor) -> None:
        """A Conv/Dense reads ``tensor``: its labels must be zero there to be removable."""
        lab, z = labels[id(tensor)], zero[id(tensor)]
        result.not_zero.update(int(a) for a in lab[~z])

    for node in nodes:
        op, ins, outs = node.operation, list(node.input_tensors), list(node.output_tensors)
        cls = op.__class__.__name__
        if node.is_input:
            for tensor in outs:
                fresh(tensor, fixed=True)
            continue
        is_layer = isinstance(op, keras.layers.Layer)
        if calls[id(op)] > 1 or len(outs) != 1:
            unknown(node)
            continue
        (out,) = outs
        config = op.get_config() if is_layer else {}
        if is_layer and cls in PRODUCERS and len(ins) == 1 and config.get("groups", 1) == 1:
            read(ins[0])
            fresh(out, fixed=False)
            result.producers[op.name] = labels[id(out)]
            zero[id(out)][:] = _activation_keeps_zero(op)
            continue
        single = len(ins) == 1 and _last(ins[0]) == _last(out)
        if is_layer and cls == "DepthwiseConv2D" and single and config["depth_multiplier"] == 1:
            labels[id(out)] = labels[id(ins[0])]
            result.zero_sites[op.name] = labels[id(out)]
            zero[id(out)] = np.full(_last(out), _activation_keeps_zero(op))
            continue
        if (
            is_layer
            and cls == "BatchNormalization"
            and single
            and np.ravel(config["axis"]).tolist() in ([-1], [len(out.shape) - 1])
        ):
            labels[id(out)] = labels[id(ins[0])]
            result.zero_sites[op.name] = labels[id(out)]
            # Killing zeroes gamma, beta and the moving mean: gamma = 0 makes the channel zero whatever came
            # in; without gamma (scale=False, as in InceptionV3) a zero input stays (0 - 0) / sd + 0 = 0.
            zero[id(out)] = np.ones(_last(out), bool) if config["scale"] else zero[id(ins[0])]
            continue
        if is_layer and cls == "Flatten" and len(ins) == 1:
            positions = math.prod(ins[0].shape[1:-1])
            labels[id(out)] = np.tile(labels[id(ins[0])], positions)
            zero[id(out)] = np.tile(zero[id(ins[0])], positions)
            continue
        tensors = list(node.arguments.keras_tensors)
        scalar_op = (
            not is_layer
            and (cls in OP_UNARY or cls in OP_ELEMENTWISE)
            and len(tensors) == 1
            and all(np.ndim(a) == 0 for a in node.arguments.args if not isinstance(a, keras.KerasTensor))
            and not node.arguments.kwargs
        )
        if single and ((is_layer and cls in PER_CHANNEL) or scalar_op):
            labels[id(out)] = labels[id(ins[0])]
            if is_layer:
                at_zero = op(_zeros(ins[0]))
            else:
                args, kwargs = node.arguments.fill_in({id(ins[0]): keras.ops.convert_to_tensor(_zeros(ins[0]))})
                at_zero = op(*args, **kwargs)
            zero[id(out)] = zero[id(ins[0])] & _zero_at_zero(at_zero, _last(out))
            continue
        merge = MERGES.get(cls) if is_layer else OP_MERGES.get(cls) if len(tensors) == 2 else None
        if merge and len(ins) >= 2 and all(_last(t) == _last(out) for t in ins):
            first = labels[id(ins[0])]
            for other in ins[1:]:
                for a, b in zip(first, labels[id(other)]):
                    uf.union(int(a), int(b))
            labels[id(out)] = first
            stacked = np.stack([zero[id(t)] for t in ins])
            zero[id(out)] = stacked.any(0) if merge == "or" else stacked.all(0)
            continue
        if is_layer and cls == "Concatenate" and config["axis"] in (-1, len(out.shape) - 1):
            labels[id(out)] = np.concatenate([labels[id(t)] for t in ins])
            zero[id(out)] = np.concatenate([zero[id(t)] for t in ins])
            continue
        unknown(node)
    for tensor in model.outputs:
        result.fixed.update(int(a) for a in labels[id(tensor)])
    return result


def kill_channels(model, seed: int = 0, fraction: float = 0.25) -> dict[str, list[int]]:
    """Make a seeded random subset of removable channels exactly dead, in place.

    Per group of coupled producers it kills between one and ``fraction`` of the
    group's channels (never all; none in a group under 4 channels), picked among
    the killable ones: zeroes their kernel slices and biases in every producer,
    and gamma/beta/moving mean and depthwise kernel/bias in every BatchNormalization and
    DepthwiseConv they pass.

    Returns:
        Per producer layer name, the sorted output-channel indices now dead (every producer is listed).
    """
    result = trace(model)
    uf = result.uf
    rng = np.random.default_rng(seed)
    killed: set[int] = set()
    for _names, roots in sorted(result.killable().items(), key=lambda item: sorted(item[0])):
        # A fraction of the group's own channels: where a residual add lines a producer's units up with
        # several other producers' (a concatenation), each part is a group of its own.
        most = min(len(roots) - 1, int(len(roots) * fraction))
        if most >= 1:
            killed.update(int(r) for r in rng.choice(roots, rng.integers(1, most + 1), replace=False))

    def dead(lab: np.ndarray) -> np.ndarray:
        return np.array([uf.find(int(a)) in killed for a in lab], bool)

    expected = {}
    for name, lab in result.producers.items():
        mask = dead(lab)
        expected[name] = [int(i) for i in np.flatnonzero(mask)]
        layer = model.get_layer(name)
        for variable in layer.weights:
            value = variable.numpy()
            if variable.name in ("kernel", "pointwise_kernel", "bias"):
                value[..., mask] = 0
                variable.assign(value)
    for name, lab in result.zero_sites.items():
        mask = dead(lab)
        layer = model.get_layer(name)
        for variable in layer.weights:
            value = variable.numpy()
            if variable.name in ("gamma", "beta", "moving_mean", "bias"):
                value[mask] = 0
            elif variable.name == "depthwise_kernel":
                value[..., mask, :] = 0
            else:
                continue
            variable.assign(value)
    return expected


def jitter_batchnorm(model, x: np.ndarray, seed: int = 0) -> None:
    """Give every BatchNormalization random scales and offsets, and the moving statistics of the batch ``x``.

    An untrained network's BatchNormalization layers are identities, and a deep
    stack of them leaves outputs that hardly depend on the input, where agreeing
    outputs would check little. One forward pass in training mode with momentum
    0 sets each layer's moving statistics to those its input has on ``x``.
    """
    rng = np.random.default_rng(seed)
    norms = [layer for layer in model.layers if layer.__class__.__name__ == "BatchNormalization"]
    for layer in norms:
        for variable in layer.weights:
            if variable.name == "gamma":
                variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(variable.dtype))
            elif variable.name == "beta":
                variable.assign(rng.normal(0.0, 0.1, variable.shape).astype(variable.dtype))
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    model(x, training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum
