"""The channel dependency graph of a Keras model: which output units must be removed together.

The last axis of every tensor (its channels) is described by a :data:`Layout`:
blocks, each ``tiles`` repetitions of a run of segments, a segment being the
channels of one group. A Dense or convolution layer (a producer) starts a new
group; pass-through layers (activations, pooling, BatchNormalization, ...) carry
their input's layout; Flatten tiles it over the spatial positions; Concatenate
joins layouts; Add and the other merges unify their inputs' groups, so coupled
producers lose the same indices. A group is frozen (never pruned) when it reaches
a model output, feeds a layer the graph cannot reason about (a boundary, left
whole), or holds an excluded layer.

Which layer classes move channels how is the data table :data:`RULES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from prunectl.core.errors import SelectionError, StructureError


@dataclass(frozen=True)
class Rule:
    """How one layer class moves channels.

    Attributes:
        kind: ``producer`` (new units), ``passthrough`` (keeps its input's channels),
            ``flatten``, ``reshape``, ``merge`` (elementwise over inputs) or ``concat``.
        units: config key of a producer's unit count.
        in_axes: ``(weight, axis, block_key)`` sliced by the kept input channels;
            ``block_key`` names a config value of consecutive entries per channel.
        out_axes: ``(weight, axis)`` sliced by a producer's kept units.
        fold: how a removed input's mean reaches the bias (see ``structural.input_map``).
        check: returns why a config cannot be handled (the layer is then a boundary).
    """

    kind: str
    units: str | None = None
    in_axes: tuple = ()
    out_axes: tuple = ()
    fold: str | None = None
    check: Callable[[dict, int], str | None] | None = None


def _last_axis(key: str) -> Callable[[dict, int], str | None]:
    def check(config: dict, rank: int) -> str | None:
        axis = config.get(key, -1)
        axes = axis if isinstance(axis, (list, tuple)) else [axis]
        if [a % rank for a in axes] != [rank - 1]:
            return f"{key}={axis} is not the channel axis"
        return None

    return check


def _conv_check(config: dict, rank: int) -> str | None:
    if config.get("groups", 1) != 1:
        return f"grouped convolution (groups={config['groups']})"
    return None


def _depthwise_check(config: dict, rank: int) -> str | None:
    if config.get("depth_multiplier", 1) != 1:
        return f"depth_multiplier={config['depth_multiplier']}"
    return None


def _activation_check(config: dict, rank: int) -> str | None:
    if config.get("activation") in ("softmax", "log_softmax"):
        return f"{config['activation']} normalizes over the channels"
    return None


_DENSE = Rule("producer", "units", (("kernel", 0, None),), (("kernel", -1), ("bias", 0)), "dense")
_CONV = Rule("producer", "filters", (("kernel", -2, None),), (("kernel", -1), ("bias", 0)), "conv", _conv_check)
_TRANSPOSE = Rule("producer", "filters", (("kernel", -1, None),), (("kernel", -2), ("bias", 0)), "transpose")
_SEPARABLE = Rule("producer", "filters",
                  (("depthwise_kernel", -2, None), ("pointwise_kernel", -2, "depth_multiplier")),
                  (("pointwise_kernel", -1), ("bias", 0)), "separable")
_DEPTHWISE = Rule("passthrough", in_axes=(("kernel", -2, None), ("bias", 0, None)), check=_depthwise_check)
_NORM_PARAMS = tuple((w, 0, None) for w in ("gamma", "beta", "moving_mean", "moving_variance"))
_PASS = Rule("passthrough")

RULES: dict[str, Rule] = {
    "Dense": _DENSE,
    **{f"Conv{d}D": _CONV for d in (1, 2, 3)},
    **{f"Conv{d}DTranspose": _TRANSPOSE for d in (1, 2, 3)},
    **{f"SeparableConv{d}D": _SEPARABLE for d in (1, 2)},
    **{f"DepthwiseConv{d}D": _DEPTHWISE for d in (1, 2)},
    "BatchNormalization": Rule("passthrough", in_axes=_NORM_PARAMS, check=_last_axis("axis")),
    "LayerNormalization": Rule("passthrough", in_axes=_NORM_PARAMS[:2], check=_last_axis("axis")),
    "Activation": Rule("passthrough", check=_activation_check),
    **{name: _PASS for name in (
        "ReLU", "LeakyReLU", "ELU", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
        "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity")},
    **{f"{op}{d}D": _PASS for op in ("MaxPooling", "AveragePooling", "GlobalMaxPooling", "GlobalAveragePooling",
                                     "ZeroPadding", "Cropping", "UpSampling") for d in (1, 2, 3)},
    "Flatten": Rule("flatten"),
    "Reshape": Rule("reshape"),
    **{name: Rule("merge") for name in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")},
    "Concatenate": Rule("concat"),
}


@dataclass(frozen=True)
class Block:
    """``tiles`` repetitions of a run of segments ``(group, channels)``."""

    tiles: int
    segments: tuple[tuple[int, int], ...]

    @property
    def width(self) -> int:
        return sum(n for _, n in self.segments)


Layout = tuple[Block, ...]


def layout_width(layout: Layout) -> int:
    """Number of features a layout describes."""
    return sum(b.tiles * b.width for b in layout)


@dataclass
class Group:
    """Output units of coupled producers, removed with the same indices.

    Attributes:
        id: position in :attr:`ChannelGraph.groups`.
        size: units per producer.
        producers: names of the layers whose outputs form the group.
        frozen: why the group is never pruned, or None.
    """

    id: int
    size: int
    producers: list[str] = field(default_factory=list)
    frozen: str | None = None


@dataclass
class LayerInfo:
    """What the graph knows about one layer.

    Attributes:
        layer: the live Keras layer.
        rule: how it moves channels, or None for a boundary.
        reason: why it is a boundary.
        in_layout: the layout of its (first) input, where weights are sliced by it.
        out_group: a producer's output group id.
        observed: a producer's input tensor (where its input activations are measured).
        shapes: ``(input shape, output shape)`` of its first call.
    """

    layer: Any
    rule: Rule | None
    reason: str | None = None
    in_layout: Layout | None = None
    out_group: int | None = None
    observed: Any = None
    shapes: tuple = ((), ())

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def class_name(self) -> str:
        return self.layer.__class__.__name__


@dataclass
class ChannelGraph:
    """Layers, groups and boundaries of one model (see :func:`build_graph`).

    Attributes:
        inputs: the symbolic inputs of the model's graph (for calibration probes).
        layers: one entry per layer, inputs first.
        groups: the resolved groups, by id.
    """

    inputs: list
    layers: list[LayerInfo]
    groups: list[Group]

    @property
    def boundaries(self) -> list[LayerInfo]:
        return [info for info in self.layers if info.rule is None and info.class_name != "InputLayer"]


class _Groups:
    """Union-find over group ids, with frozen reasons and producers per root."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.frozen: dict[int, str] = {}
        self.producers: dict[int, list[str]] = {}

    def new(self, size: int, frozen: str | None = None, producer: str | None = None) -> int:
        gid = len(self.parent)
        self.parent.append(gid)
        self.size.append(size)
        self.producers[gid] = [producer] if producer else []
        if frozen:
            self.frozen[gid] = frozen
        return gid

    def find(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        self.parent[b] = a
        self.producers[a] += self.producers.pop(b)
        if b in self.frozen:
            self.frozen.setdefault(a, self.frozen.pop(b))

    def freeze(self, layout: Layout, reason: str) -> None:
        for block in layout:
            for gid, _ in block.segments:
                self.frozen.setdefault(self.find(gid), reason)

    def fresh(self, width: int, reason: str) -> Layout:
        return (Block(1, ((self.new(width, reason), width),)),)


def _same_structure(a: Layout, b: Layout) -> bool:
    return len(a) == len(b) and all(
        x.tiles == y.tiles and [n for _, n in x.segments] == [n for _, n in y.segments] for x, y in zip(a, b)
    )


def _concat(layouts: Sequence[Layout]) -> Layout:
    blocks: list[Block] = []
    for layout in layouts:
        for block in layout:
            if blocks and block.tiles == 1 and blocks[-1].tiles == 1:
                blocks[-1] = Block(1, blocks[-1].segments + block.segments)
            else:
                blocks.append(block)
    return tuple(blocks)


def model_nodes(model) -> tuple[list, list]:
    """The symbolic inputs and the call nodes of a Sequential or Functional model, inputs first.

    Raises:
        StructureError: the model has no layer graph (a subclassed model).
    """
    # A Sequential model keeps its graph in the Functional it builds on its first call.
    graph = getattr(model, "_functional", None) or model
    by_depth = getattr(graph, "_nodes_by_depth", None)
    if by_depth is None:
        raise StructureError(
            "structural pruning needs a Sequential or Functional model. "
            f"Received: {model.__class__.__name__} {model.name!r}"
        )
    return list(graph.inputs), [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def _channels(tensor) -> int:
    return int(tensor.shape[-1] or 0)


def build_graph(model, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> ChannelGraph:
    """Trace ``model``'s layers into coupled groups of prunable units.

    Args:
        model: a built Sequential or Functional Keras model.
        include: producer-name patterns (``re.search``) that may be pruned (default: all).
        exclude: producer-name patterns left whole; a group is pruned only if all its producers are selected.

    Returns:
        The :class:`ChannelGraph`, with every layer it could not reason about listed as a boundary.

    Raises:
        StructureError: the model has no layer graph.
        OptionError: a pattern is not a valid regular expression.
        SelectionError: a pattern matches no prunable layer.
    """
    inputs, nodes = model_nodes(model)
    groups = _Groups()
    layouts: dict[int, Layout] = {}
    infos: dict[str, LayerInfo] = {}
    calls: dict[str, int] = {}
    for node in nodes:
        calls[node.operation.name] = calls.get(node.operation.name, 0) + 1
    for node in nodes:
        layer = node.operation
        ins = [layouts[id(t)] for t in node.input_tensors]
        outs = list(node.output_tensors)
        info = infos.get(layer.name) or LayerInfo(layer, None)
        infos[layer.name] = info
        if node.input_tensors:
            info.shapes = (tuple(node.input_tensors[0].shape), tuple(outs[0].shape))
        result = _trace(layer, node, ins, outs, calls[layer.name], groups, info)
        for tensor, layout in zip(outs, result):
            layouts[id(tensor)] = layout
    graph_outputs = getattr(model, "_functional", None) or model
    for tensor in graph_outputs.outputs:
        groups.freeze(layouts[id(tensor)], "model output")
    _select(infos, groups, include, exclude)
    return _resolve(inputs, list(infos.values()), groups)


def _trace(layer, node, ins: list[Layout], outs: list, ncalls: int, groups: _Groups,
           info: LayerInfo) -> list[Layout]:
    class_name = layer.__class__.__name__
    if class_name == "InputLayer":
        return [groups.fresh(_channels(t), "model input") for t in outs]
    rule, reason = _rule_for(layer, class_name, node, ncalls)
    info.rule, info.reason = rule, reason
    if rule is None:
        for layout in ins:
            groups.freeze(layout, f"feeds {layer.name} ({class_name})")
        return [groups.fresh(_channels(t), f"output of {layer.name} ({class_name})") for t in outs]
    out_width = _channels(outs[0])
    if rule.kind == "producer":
        info.in_layout, info.observed = ins[0], node.input_tensors[0]
        frozen = _activation_check(layer.get_config(), 0)
        info.out_group = groups.new(out_width, frozen and f"{layer.name}: {frozen}", producer=layer.name)
        return [(Block(1, ((info.out_group, out_width),)),)]
    if rule.kind in ("passthrough", "reshape"):
        info.in_layout = ins[0]
        return [ins[0]]
    if rule.kind == "flatten":
        positions = math.prod(info.shapes[0][1:-1])
        if positions == 1:
            return [ins[0]]
        if len(ins[0]) == 1:
            return [(Block(ins[0][0].tiles * positions, ins[0][0].segments),)]
    if rule.kind == "concat" and _is_channel_axis(layer.get_config().get("axis", -1), len(outs[0].shape)):
        return [_concat(ins)]
    full = [layout for layout in ins if layout_width(layout) == out_width]
    if rule.kind == "flatten" or not full:
        for layout in ins:
            groups.freeze(layout, f"feeds {layer.name} ({class_name}), which mixes channel blocks")
        return [groups.fresh(out_width, f"output of {layer.name} ({class_name})")]
    for layout in ins:
        if layout_width(layout) != out_width:
            groups.freeze(layout, f"broadcast in {layer.name} ({class_name})")
    if any(not _same_structure(full[0], other) for other in full[1:]):
        for layout in full:
            groups.freeze(layout, f"inputs of {layer.name} ({class_name}) do not line up")
        return [groups.fresh(out_width, f"output of {layer.name} ({class_name})")]
    for other in full[1:]:
        for a, b in zip(full[0], other):
            for (ga, _), (gb, _) in zip(a.segments, b.segments):
                groups.union(ga, gb)
    return [full[0]]


def _is_channel_axis(axis: int, rank: int) -> bool:
    return axis % rank == rank - 1


def _rule_for(layer, class_name: str, node, ncalls: int) -> tuple[Rule | None, str | None]:
    rule = RULES.get(class_name)
    if rule is None:
        return None, f"no rule for class {class_name}"
    if ncalls > 1:
        return None, f"shared layer (called {ncalls} times)"
    config = layer.get_config()
    if config.get("data_format") == "channels_first":
        return None, "data_format=channels_first"
    ins, outs = list(node.input_tensors), list(node.output_tensors)
    if len(outs) != 1 or not ins:
        return None, "not one output"
    rank = len(ins[0].shape)
    reason = rule.check(config, rank) if rule.check else None
    if reason:
        return None, reason
    if rule.kind in ("passthrough", "reshape") and _channels(ins[0]) != _channels(outs[0]):
        return None, "changes the channel count"
    return rule, None


def _select(infos: dict[str, LayerInfo], groups: _Groups, include: Sequence[str], exclude: Sequence[str]) -> None:
    from prunectl.core.weights.selection import select_names

    producers = [i.name for i in infos.values() if i.out_group is not None]
    chosen = set(select_names(producers, include, exclude))
    for name in producers:
        if name not in chosen:
            groups.freeze(((Block(1, ((infos[name].out_group, 1),))),), f"{name} is not selected")


def _resolve(inputs: list, infos: list[LayerInfo], groups: _Groups) -> ChannelGraph:
    roots: dict[int, int] = {}
    resolved: list[Group] = []
    for gid in range(len(groups.parent)):
        root = groups.find(gid)
        if root not in roots:
            roots[root] = len(resolved)
            resolved.append(Group(len(resolved), groups.size[root], groups.producers.get(root, []),
                                  groups.frozen.get(root)))
        roots[gid] = roots[root]

    def relabel(layout: Layout | None) -> Layout | None:
        if layout is None:
            return None
        return tuple(Block(b.tiles, tuple((roots[g], n) for g, n in b.segments)) for b in layout)

    for info in infos:
        info.in_layout = relabel(info.in_layout)
        if info.out_group is not None:
            info.out_group = roots[info.out_group]
    return ChannelGraph(inputs, infos, resolved)


def segment_features(layout: Layout):
    """Yield ``(group id, features)`` per segment: ``features[t, c]`` is channel ``c``'s feature index in tile ``t``."""
    offset = 0
    for block in layout:
        start = offset
        for gid, size in block.segments:
            tiles = np.arange(block.tiles)[:, None] * block.width
            yield gid, start + tiles + np.arange(size)[None, :]
            start += size
        offset += block.tiles * block.width


def kept_features(layout: Layout, keep: dict[int, np.ndarray]) -> np.ndarray:
    """Feature indices of ``layout`` left once each group keeps only ``keep[group]`` (all if absent)."""
    mask = np.ones(layout_width(layout), dtype=bool)
    for gid, features in segment_features(layout):
        if gid in keep:
            dropped = np.setdiff1d(np.arange(features.shape[1]), keep[gid])
            mask[features[:, dropped].ravel()] = False
    return np.flatnonzero(mask)
