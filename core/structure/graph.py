"""The channel dependency graph of a Keras model: which output units must be removed together.

The channel axis of every tensor (the last one, or axis 1 after a ``channels_first``
layer; see :mod:`prunectl.core.structure.formats`) is described by a :data:`Layout`:
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

A model nested as a layer is traced through (see
:func:`~prunectl.core.structure.keras_graph.layer_graph`): its layers are
named by path (``encoder/dense``) and couple to the outer graph like any
other. A layer called at several sites keeps one set of weights, so its calls
keep the same channels: a later call's input groups are joined with the first
call's and a producer's output carries its one group at every call; a layer
without weights moves each call's channels on its own. A shared layer whose
calls do not line up is a boundary.

Units inside one layer (a MultiHeadAttention's heads: the class's ``inner`` in the
layer table) are groups of their own, coupled to nothing around the layer (see
:mod:`prunectl.core.structure.inner`). Rules marked ``residual`` (Embedding as a
producer, attention passing its query's channels through) apply only with
``residual=True`` (``--prune-residual``); otherwise those layers are boundaries and
a transformer's residual stream is left whole.

Which layer classes move channels how is each class's ``rule`` in the layer table
(:mod:`prunectl.core.layers`); layouts and the group union-find are in
:mod:`prunectl.core.structure.layout`, and the model's calls are read through
:mod:`prunectl.core.structure.keras_graph`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from prunectl.core.layers import Rule, get_spec, op_key
from prunectl.core.layers.builtin import activation_check
from prunectl.core.options import DEFAULT_NORMS
from prunectl.core.structure.formats import axis_reason, format_axis, input_axis, output_axis
from prunectl.core.structure.inner import add_inner_groups
from prunectl.core.structure.keras_graph import LayerGraph, layer_graph

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
RESIDUAL = "on the residual stream (pruned with --prune-residual)"


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
        axis: the channel axis of its (first) input, and of its outputs of the same rank (see
            :mod:`prunectl.core.structure.formats`); -1 until traced.
        path: its name preceded by the nested models it sits in (``encoder/dense``); its name at the top.
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
    axis: int = -1
    path: str = ""
    inner: tuple = ()

    @property
    def name(self) -> str:
        """The layer's path: unique, where names of layers in nested models may repeat outer ones."""
        return self.path or self.layer.name

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
        trace: the layer calls it was traced from (to read tensors inside nested models).
        nested: the layouts of each nested model's inputs, by path (its input layers' widths follow them).
    """

    inputs: list
    layers: list[LayerInfo]
    groups: list[Group]
    trace: LayerGraph | None = None
    nested: dict[str, list[Layout]] = field(default_factory=dict)

    @property
    def boundaries(self) -> list[LayerInfo]:
        return [info for info in self.layers if info.rule is None and info.class_name != "InputLayer"]


def _channels(tensor, axis: int = -1) -> int:
    return int(tensor.shape[axis] or 0)


def _out_axis(info: LayerInfo, tensor) -> int:
    """The channel axis of ``tensor``, an output of ``info``'s layer."""
    return output_axis(info.axis % len(tensor.shape), len(info.shapes[0]) or len(tensor.shape), len(tensor.shape))


def _on_axis(call, ins: list[Layout], axes: dict[int, int], groups: Groups, info: LayerInfo) -> list[Layout]:
    """Set ``info.axis``; an input whose channels are on another axis than the one the layer reads is frozen.

    E.g. a Dense or a channels-last Flatten reading a ``channels_first`` tensor: the layer
    then reads the channels it sees (a fresh, frozen layout of that axis) instead.
    """
    if not call.inputs:
        return ins
    spec = get_spec(info.class_name)
    rank = len(call.inputs[0].shape)
    info.axis = input_axis(spec.rule if spec else None, info.config, rank, axes.get(id(call.inputs[0])))
    adapted = []
    for tensor, layout in zip(call.inputs, ins):
        given = axes.get(id(tensor), len(tensor.shape) - 1)
        if len(tensor.shape) == rank and given != info.axis:
            reason = f"{info.name} ({info.class_name}) reads axis {info.axis}, its input's channels are on axis {given}"
            groups.freeze(layout, reason)
            layout = groups.fresh(_channels(tensor, info.axis), reason)
        adapted.append(layout)
    return adapted


def build_graph(
    model,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    norms: str = DEFAULT_NORMS,
    residual: bool = False,
) -> ChannelGraph:
    """Trace ``model``'s layers into coupled groups of prunable units.

    Args:
        model: a built Sequential or Functional Keras model.
        include: producer-name patterns (``re.search``) that may be pruned (default: all).
        exclude: producer-name patterns left whole; a group is pruned only if all its producers are selected.
        norms: one of :data:`~prunectl.core.options.NORM_MODES`: leave normalizations over the channels whole as
            boundaries (``"boundary"``, the default) or prune through them (``"joint"``).
        residual: apply the rules marked ``residual`` (Embedding as a producer, attention passing its
            query's channels through), so that a transformer's residual stream is pruned too.

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
    infos: dict[int, LayerInfo] = {}
    axes: dict[int, int] = {}  # channel axis by tensor id (last, or 1 after a channels_first layer)
    for call in graph.calls:
        layer = call.layer
        ins = [layouts[id(t)] for t in call.inputs]
        outs = list(call.outputs)
        info = infos.get(id(layer))
        if info is not None:  # a shared layer's later call
            ins = _on_axis(call, ins, axes, groups, info)
            result = _trace_again(call, ins, outs, groups, info)
        else:
            info = infos[id(layer)] = LayerInfo(layer, None, is_op=call.is_op, config=_config(layer), path=call.path)
            if call.inputs and outs:
                info.shapes = (tuple(call.inputs[0].shape), tuple(outs[0].shape))
            ins = _on_axis(call, ins, axes, groups, info)
            result = _trace(call, ins, outs, groups, info, norms, residual)
        for tensor, layout in zip(outs, result):
            layouts[id(tensor)] = layout
            if call.inputs:
                axes[id(tensor)] = _out_axis(info, tensor)
    nested = _nested_inputs(graph, layouts, groups)
    for tensor in graph.outputs:
        groups.freeze(layouts[id(tensor)], "model output")
    for info in infos.values():
        add_inner_groups(info, groups)
    _select(infos, groups, include, exclude)
    return _resolve(graph, list(infos.values()), groups, nested)


def _nested_inputs(graph: LayerGraph, layouts: dict[int, Layout], groups: Groups) -> dict[str, list[Layout]]:
    """The input layouts of each nested model, its calls' joined: its input layers have one width."""
    nested: dict[str, list[Layout]] = {}
    for path, _, tensors in graph.nested:
        ins = [layouts[id(t)] for t in tensors]
        if path not in nested:
            nested[path] = ins
            continue
        for first, layout in zip(nested[path], ins):
            aligned = groups.align([first, layout])
            if aligned is None:
                for each in (first, layout):
                    groups.freeze(each, f"the calls of nested model {path} do not line up")
            else:
                _join(groups, aligned)
    return nested


def _config(layer) -> dict:
    try:
        config = layer.get_config()
    except Exception:  # an operation or custom layer without a config: its rule decides whether that matters
        return {}
    return config if isinstance(config, dict) else {}


def _trace(
    call,
    ins: list[Layout],
    outs: list,
    groups: Groups,
    info: LayerInfo,
    norms: str = DEFAULT_NORMS,
    residual: bool = False,
) -> list[Layout]:
    class_name = info.class_name
    if class_name == "InputLayer":
        return [groups.fresh(_channels(t), "model input") for t in outs]
    info.rule, info.reason = _rule_for(info, call)
    if info.rule is not None and info.rule.kind == "normalize" and norms == "boundary":
        info.rule, info.reason = None, NORMALIZES
    if info.rule is not None and info.rule.residual and not residual:
        info.rule, info.reason = None, RESIDUAL
    if info.rule is not None:
        try:
            return _follow(info.rule, call, ins, outs, groups, info)
        except Exception as exc:  # a rule that does not fit this layer (e.g. a user rule naming a missing key)
            info.rule, info.reason = None, f"its rule does not apply ({type(exc).__name__}: {exc})"
            info.in_layout, info.observed, info.out_group, info.out_layout = None, None, None, None
    for layout in ins:
        groups.freeze(layout, f"feeds {info.name} ({class_name})")
    return [groups.fresh(_channels(t, _out_axis(info, t)), f"output of {info.name} ({class_name})") for t in outs]


def _follow(rule: Rule, call, ins: list[Layout], outs: list, groups: Groups, info: LayerInfo) -> list[Layout]:
    class_name = info.class_name
    out_width = _channels(outs[0], _out_axis(info, outs[0]))
    if rule.kind == "producer":
        # Checked before the group exists: a rule that does not fit leaves no trace in the groups.
        if info.config[rule.units] != out_width:
            raise ValueError(f"config {rule.units}={info.config[rule.units]} is not the output width {out_width}")
        info.in_layout, info.observed = ins[0], call.inputs[0]
        frozen = activation_check(info.config, 0)
        info.out_group = groups.new(out_width, frozen and f"{info.name}: {frozen}", producer=info.name)
        info.out_layout = (Block(1, ((info.out_group, out_width),)),)
        return [info.out_layout]
    if rule.kind in ("passthrough", "normalize", "reshape"):
        # A pass-through of several inputs (attention's query, value, key) slices them all by the first's channels.
        if any(layout != ins[0] for layout in ins[1:]):
            raise ValueError("its inputs have different channels (cross-attention)")
        info.in_layout = ins[0]
        return [ins[0]]
    if rule.kind == "flatten":
        positions = math.prod(d for a, d in enumerate(info.shapes[0]) if a not in (0, info.axis))
        if positions == 1:
            return [ins[0]]
        if len(ins[0]) == 1:
            return [(Block(ins[0][0].tiles * positions, ins[0][0].segments),)]
    if rule.kind == "concat" and info.config.get("axis", -1) % len(outs[0].shape) == info.axis:
        return [concat(ins)]
    full = [layout for layout in ins if layout_width(layout) == out_width]
    if rule.kind == "flatten" or not full:
        for layout in ins:
            groups.freeze(layout, f"feeds {info.name} ({class_name}), which mixes channel blocks")
        return [groups.fresh(out_width, f"output of {info.name} ({class_name})")]
    for layout in ins:
        if layout_width(layout) != out_width:
            groups.freeze(layout, f"broadcast in {info.name} ({class_name})")
    aligned = groups.align(full)
    if aligned is None:
        for layout in full:
            groups.freeze(layout, f"inputs of {info.name} ({class_name}) do not line up")
        return [groups.fresh(out_width, f"output of {info.name} ({class_name})")]
    _join(groups, aligned)
    return [aligned[0]]


def _rule_for(info: LayerInfo, call) -> tuple[Rule | None, str | None]:
    class_name = info.class_name
    spec = get_spec(class_name)
    rule = spec.rule if spec else None
    if rule is None:
        return None, f"no rule for {'operation' if info.is_op else 'class'} {class_name}"
    config = info.config
    if not config and not info.is_op:
        return None, "get_config() gives no config"
    ins, outs = list(call.inputs), list(call.outputs)
    if len(outs) != 1 or not ins:
        return None, "not one output"
    wide = [shape for shape in call.constants if math.prod(shape) != 1]
    if wide:
        return None, f"constant argument of shape {wide[0]} (per-channel values would keep their old width)"
    rank = len(ins[0].shape)
    try:
        reason = rule.check(config, rank) if rule.check else None
        reason = (
            reason or axis_reason(rule, config, info.axis, rank) or _last_axis_reason(rule, config, info.axis, rank)
        )
    except Exception as exc:  # a check written for another config
        reason = f"its rule check failed ({type(exc).__name__}: {exc})"
    if reason:
        return None, reason
    if rule.kind in ("passthrough", "normalize", "reshape") and _channels(ins[0], info.axis) != _channels(
        outs[0], _out_axis(info, outs[0])
    ):
        return None, "changes the channel count"
    return rule, None


def _last_axis_reason(rule: Rule, config: dict, axis: int, rank: int) -> str | None:
    """Why a layer whose per-channel weights or statistics follow the last axis cannot read channels on ``axis``."""
    if axis == rank - 1 or rule.axis is not None or format_axis(config, rank) is not None:
        return None
    if rule.in_axes or rule.kind == "normalize":
        return f"it works along the last axis; the channels are on axis {axis}"
    return None


def _trace_again(call, ins: list[Layout], outs: list, groups: Groups, info: LayerInfo) -> list[Layout]:
    """A later call of a shared layer: one set of weights, so every call keeps the same channels.

    The inputs of a layer with weights are joined, group by group, with its first call's; a producer's
    outputs carry its one group at every call. A layer without weights moves each call's channels by
    its rule, as if it were two layers. Calls that cannot be lined up (different widths or blocks)
    make the layer a boundary.
    """
    rule = info.rule
    if rule is not None and _rule_for(info, call)[0] is None:
        _unshare(info, groups, "its calls differ (a later call does not fit its rule)")
        rule = None
    if rule is not None and not info.weights and rule.kind != "producer":
        return _follow(rule, call, ins, outs, groups, replace(info))
    if rule is not None:
        aligned = groups.align([info.in_layout, ins[0]]) if info.in_layout is not None and ins else None
        if aligned is None:
            _unshare(info, groups, "its calls' inputs do not line up (different widths or blocks)")
        else:
            _join(groups, aligned)
            if rule.kind == "producer" and info.out_layout is not None:
                return [info.out_layout]
            return [ins[0]]
    for layout in ins:
        groups.freeze(layout, f"feeds {info.name} ({info.class_name})")
    return [groups.fresh(_channels(t, _out_axis(info, t)), f"output of {info.name} ({info.class_name})") for t in outs]


def _unshare(info: LayerInfo, groups: Groups, reason: str) -> None:
    """Make a shared layer a boundary after its first call was traced with its rule."""
    for layout in (info.in_layout, info.out_layout):
        if layout is not None:
            groups.freeze(layout, f"{info.name} is shared and {reason}")
    info.rule, info.reason = None, f"shared layer: {reason}"
    info.in_layout, info.observed, info.out_group, info.out_layout = None, None, None, None


def _join(groups: Groups, aligned: list[Layout]) -> None:
    for other in aligned[1:]:
        for a, b in zip(aligned[0], other):
            for (ga, _), (gb, _) in zip(a.segments, b.segments):
                groups.union(ga, gb)


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


def _resolve(
    graph: LayerGraph, infos: list[LayerInfo], groups: Groups, nested: dict[str, list[Layout]]
) -> ChannelGraph:
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
    nested = {path: [relabel(layout) or () for layout in ins] for path, ins in nested.items()}
    return ChannelGraph(graph.inputs, infos, resolved, graph, nested)
