"""The channel dependency graph of a Keras model: which output units must be removed together.

The last axis of every tensor (its channels) is described by a :data:`Layout`:
blocks, each ``tiles`` repetitions of a run of segments, a segment being the
channels of one group. A Dense or convolution layer (a producer) starts a new
group; pass-through layers (activations, pooling, BatchNormalization, ...) carry
their input's layout; Flatten tiles it over the spatial positions; Concatenate
joins layouts; Add and the other merges unify their inputs' groups, so coupled
producers lose the same indices. Operations recorded in a Functional graph
(``x + 1.0``, ``keras.ops.relu``) follow their own ``ops.*`` rules: elementwise
ones move channels like the layers above; one with a constant argument wider than
a scalar, or with no rule, is a boundary. A group is frozen (never pruned) when it reaches
a model output, feeds a layer the graph cannot reason about (a boundary, left
whole), or holds an excluded layer.

Normalizations over the channel axis (LayerNormalization and kin, rule kind
``normalize``) take statistics over the channels, so removing one changes the
others: with ``norms="boundary"`` (the default) they are boundaries that freeze
their input, with ``norms="joint"`` they are pruned like a pass-through and the plan
notes the change.

Which layer classes move channels how is each class's ``rule`` in the layer table
(:mod:`prunectl.core.layers`); layouts and the group union-find are in
:mod:`prunectl.core.structure.layout`, and the model's calls are read through
:mod:`prunectl.core.structure.keras_graph`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prunectl.core.layers import Rule, get_spec, op_key
from prunectl.core.layers.builtin import activation_check
from prunectl.core.options import DEFAULT_NORMS
from prunectl.core.structure.inner import add_inner_groups
from prunectl.core.structure.keras_graph import layer_graph

# kept_features, layout_width and segment_features are re-exported: callers import them from here.
from prunectl.core.structure.layout import (
    Block,
    Groups,
    Layout,
    concat,
    kept_features,  # noqa: F401
    layout_width,
)

NORMALIZES = "normalizes over the channels"


@dataclass
class Group:
    """Output units of coupled producers, removed with the same indices.

    Attributes:
        id: position in :attr:`ChannelGraph.groups`.
        size: units per producer.
        producers: names of the layers whose outputs form the group.
        frozen: why the group is never pruned, or None.
        inner: what the units are when they live inside one layer (``"heads"``), else None.
    """

    id: int
    size: int
    producers: list[str] = field(default_factory=list)
    frozen: str | None = None
    inner: str | None = None


@dataclass
class LayerInfo:
    """What the graph knows about one layer.

    Attributes:
        layer: the live Keras layer.
        rule: how it moves channels, or None for a boundary.
        reason: why it is a boundary.
        in_layout: the layout of its (first) input, where weights are sliced by it.
        out_group: a producer's output group id (None when its units were split between groups).
        out_layout: a producer's output units as a layout: one group, or the consecutive parts
            a merge split it into.
        observed: a producer's input tensor (where its input activations are measured).
        shapes: ``(input shape, output shape)`` of its first call.
        is_op: ``layer`` is a graph operation (``keras.ops``), not a Layer.
        config: the layer's config, read once (empty where ``get_config`` fails or for an operation).
        inner: ``(Inner, group id)`` of each kind of unit inside the layer (see :mod:`~prunectl.core.structure.inner`).
    """

    layer: Any
    rule: Rule | None
    reason: str | None = None
    in_layout: Layout | None = None
    out_group: int | None = None
    out_layout: Layout | None = None
    observed: Any = None
    shapes: tuple = ((), ())
    is_op: bool = False
    config: dict = field(default_factory=dict)
    inner: tuple = ()

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def class_name(self) -> str:
        """The layer's class name; an operation's table key (``ops.Add``), so it never reads as a layer."""
        name = self.layer.__class__.__name__
        return op_key(name) if self.is_op else name

    @property
    def weights(self) -> list:
        """The layer's variables (none for an operation)."""
        return [] if self.is_op else list(getattr(self.layer, "weights", None) or [])


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


def _channels(tensor) -> int:
    return int(tensor.shape[-1] or 0)


def build_graph(
    model, include: Sequence[str] = (), exclude: Sequence[str] = (), norms: str = DEFAULT_NORMS
) -> ChannelGraph:
    """Trace ``model``'s layers into coupled groups of prunable units.

    Args:
        model: a built Sequential or Functional Keras model.
        include: producer-name patterns (``re.search``) that may be pruned (default: all).
        exclude: producer-name patterns left whole; a group is pruned only if all its producers are selected.
        norms: one of :data:`~prunectl.core.options.NORM_MODES`: leave normalizations over the channels whole as
            boundaries (``"boundary"``, the default) or prune through them (``"joint"``).

    Returns:
        The :class:`ChannelGraph`, with every layer it could not reason about listed as a boundary.

    Raises:
        StructureError: the model has no layer graph.
        OptionError: a pattern is not a valid regular expression.
        SelectionError: a pattern matches no prunable layer.
    """
    graph = layer_graph(model)
    groups = Groups()
    layouts: dict[int, Layout] = {}
    calls = graph.call_counts()
    infos: dict[int, LayerInfo] = {}
    for call in graph.calls:
        layer = call.layer
        ins = [layouts[id(t)] for t in call.inputs]
        outs = list(call.outputs)
        info = infos.get(id(layer))
        if info is None:
            info = infos[id(layer)] = LayerInfo(layer, None, is_op=call.is_op, config=_config(layer))
        if call.inputs and outs:
            info.shapes = (tuple(call.inputs[0].shape), tuple(outs[0].shape))
        result = _trace(call, ins, outs, calls[id(layer)], groups, info, norms)
        for tensor, layout in zip(outs, result):
            layouts[id(tensor)] = layout
    for tensor in graph.outputs:
        groups.freeze(layouts[id(tensor)], "model output")
    for info in infos.values():
        add_inner_groups(info, groups)
    _select(infos, groups, include, exclude)
    return _resolve(graph.inputs, list(infos.values()), groups)


def _config(layer) -> dict:
    try:
        config = layer.get_config()
    except Exception:  # an operation or custom layer without a config: its rule decides whether that matters
        return {}
    return config if isinstance(config, dict) else {}


def _trace(
    call, ins: list[Layout], outs: list, ncalls: int, groups: Groups, info: LayerInfo, norms: str = DEFAULT_NORMS
) -> list[Layout]:
    layer, class_name = call.layer, info.class_name
    if class_name == "InputLayer":
        return [groups.fresh(_channels(t), "model input") for t in outs]
    info.rule, info.reason = _rule_for(info, call, ncalls)
    if info.rule is not None and info.rule.kind == "normalize" and norms == "boundary":
        info.rule, info.reason = None, NORMALIZES
    if info.rule is not None:
        try:
            return _follow(info.rule, call, ins, outs, groups, info)
        except Exception as exc:  # a rule that does not fit this layer (e.g. a user rule naming a missing key)
            info.rule, info.reason = None, f"its rule does not apply ({type(exc).__name__}: {exc})"
            info.in_layout, info.observed, info.out_group, info.out_layout = None, None, None, None
    for layout in ins:
        groups.freeze(layout, f"feeds {layer.name} ({class_name})")
    return [groups.fresh(_channels(t), f"output of {layer.name} ({class_name})") for t in outs]


def _follow(rule: Rule, call, ins: list[Layout], outs: list, groups: Groups, info: LayerInfo) -> list[Layout]:
    layer, class_name = call.layer, info.class_name
    out_width = _channels(outs[0])
    if rule.kind == "producer":
        # Checked before the group exists: a rule that does not fit leaves no trace in the groups.
        if info.config[rule.units] != out_width:
            raise ValueError(f"config {rule.units}={info.config[rule.units]} is not the output width {out_width}")
        info.in_layout, info.observed = ins[0], call.inputs[0]
        frozen = activation_check(info.config, 0)
        info.out_group = groups.new(out_width, frozen and f"{layer.name}: {frozen}", producer=layer.name)
        info.out_layout = (Block(1, ((info.out_group, out_width),)),)
        return [info.out_layout]
    if rule.kind in ("passthrough", "normalize", "reshape"):
        info.in_layout = ins[0]
        return [ins[0]]
    if rule.kind == "flatten":
        positions = math.prod(info.shapes[0][1:-1])
        if positions == 1:
            return [ins[0]]
        if len(ins[0]) == 1:
            return [(Block(ins[0][0].tiles * positions, ins[0][0].segments),)]
    if rule.kind == "concat" and _is_channel_axis(info.config.get("axis", -1), len(outs[0].shape)):
        return [concat(ins)]
    full = [layout for layout in ins if layout_width(layout) == out_width]
    if rule.kind == "flatten" or not full:
        for layout in ins:
            groups.freeze(layout, f"feeds {layer.name} ({class_name}), which mixes channel blocks")
        return [groups.fresh(out_width, f"output of {layer.name} ({class_name})")]
    for layout in ins:
        if layout_width(layout) != out_width:
            groups.freeze(layout, f"broadcast in {layer.name} ({class_name})")
    aligned = groups.align(full)
    if aligned is None:
        for layout in full:
            groups.freeze(layout, f"inputs of {layer.name} ({class_name}) do not line up")
        return [groups.fresh(out_width, f"output of {layer.name} ({class_name})")]
    for other in aligned[1:]:
        for a, b in zip(aligned[0], other):
            for (ga, _), (gb, _) in zip(a.segments, b.segments):
                groups.union(ga, gb)
    return [aligned[0]]


def _is_channel_axis(axis: int, rank: int) -> bool:
    return axis % rank == rank - 1


def _rule_for(info: LayerInfo, call, ncalls: int) -> tuple[Rule | None, str | None]:
    class_name = info.class_name
    spec = get_spec(class_name)
    rule = spec.rule if spec else None
    if rule is None:
        return None, f"no rule for {'operation' if info.is_op else 'class'} {class_name}"
    if ncalls > 1:
        return None, f"shared {'operation' if info.is_op else 'layer'} (called {ncalls} times)"
    config = info.config
    if not config and not info.is_op:
        return None, "get_config() gives no config"
    if config.get("data_format") == "channels_first":
        return None, "data_format=channels_first"
    ins, outs = list(call.inputs), list(call.outputs)
    if len(outs) != 1 or not ins:
        return None, "not one output"
    wide = [shape for shape in call.constants if math.prod(shape) != 1]
    if wide:
        return None, f"constant argument of shape {wide[0]} (per-channel values would keep their old width)"
    rank = len(ins[0].shape)
    try:
        reason = rule.check(config, rank) if rule.check else None
    except Exception as exc:  # a check written for another config
        reason = f"its rule check failed ({type(exc).__name__}: {exc})"
    if reason:
        return None, reason
    if rule.kind in ("passthrough", "normalize", "reshape") and _channels(ins[0]) != _channels(outs[0]):
        return None, "changes the channel count"
    return rule, None


def _select(infos: dict[int, LayerInfo], groups: Groups, include: Sequence[str], exclude: Sequence[str]) -> None:
    from prunectl.core.weights.selection import select_names

    producers = {i.name: i.out_group for i in infos.values() if i.out_group is not None}
    inner = {i.name: [gid for _, gid in i.inner] for i in infos.values() if i.inner}
    chosen = set(select_names(list(producers) + [n for n in inner if n not in producers], include, exclude))
    for name, group in producers.items():
        if name not in chosen:
            groups.freeze((Block(1, ((group, 1),)),), f"{name} is not selected")
    for name, gids in inner.items():
        for gid in gids if name not in chosen else ():
            groups.freeze((Block(1, ((gid, 1),)),), f"{name} is not selected")


def _resolve(inputs: list, infos: list[LayerInfo], groups: Groups) -> ChannelGraph:
    roots: dict[int, int] = {}
    resolved: list[Group] = []
    for gid in range(len(groups.parent)):
        root = groups.find(gid)
        if root in groups.parts:  # split: every layout names its parts instead
            continue
        if root not in roots:
            roots[root] = len(resolved)
            resolved.append(
                Group(len(resolved), groups.size[root], groups.producers.get(root, []), groups.frozen.get(root))
            )
        roots[gid] = roots[root]

    def relabel(layout: Layout | None) -> Layout | None:
        if layout is None:
            return None
        return tuple(Block(b.tiles, tuple((roots[g], n) for g, n in b.segments)) for b in groups.expand(layout))

    for info in infos:
        info.in_layout = relabel(info.in_layout)
        info.out_layout = relabel(info.out_layout)
        if info.out_layout is not None:
            segments = info.out_layout[0].segments
            # A producer whose units were split between groups (see Groups.align) has no single group.
            info.out_group = segments[0][0] if len(segments) == 1 else None
        info.inner = tuple((inner, roots[gid]) for inner, gid in info.inner)
        for inner, gid in info.inner:
            resolved[gid].inner = inner.name
    return ChannelGraph(inputs, infos, resolved)
