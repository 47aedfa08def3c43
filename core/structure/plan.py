"""Structural pruning: remove whole units and filters, planned first, then executed.

:func:`plan_structure` traces the model's channel graph (``core/graph.py``),
scores each group's units with a criterion (``core/criteria.py``), chooses the
units to keep, and returns a :class:`StructuralPlan`: the groups, the indices
dropped, and units, params and multiply-adds before and after per layer. No
weight is touched. :func:`apply_plan` then rebuilds a plain Keras model from the
layers' configs, with fewer units, and copies the sliced weights into it.

Example:
    >>> plan = plan_structure(model, NeuronPruning(ratio=0.5))
    >>> print(plan.totals())
    >>> smaller = apply_plan(model, plan)
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from prunectl.core.errors import OptionError, SelectionError
from prunectl.core.layers.spec import gated
from prunectl.core.options import (
    DEFAULT_MIN_KEEP,
    DEFAULT_NORMS,
    NORM_MODES,
    SCOPES,
    check_number,
    compile_patterns,
    residual_norms,
    validate_min_keep,
    validate_neuron_ratio,
    validate_neuron_threshold,
    validate_round_to,
)
from prunectl.core.structure.cost import layer_macs
from prunectl.core.structure.criteria import CRITERIA, calibrate, lamp
from prunectl.core.structure.graph import LayerInfo, build_graph, kept_features, layout_width
from prunectl.core.structure.inner import inner_edit, slices_by_position
from prunectl.core.structure.norms import norm_notes


@dataclass(frozen=True)
class NeuronPruning:
    """One structural step: exactly one of ``threshold`` and ``ratio``.

    Attributes:
        criterion: a key of :data:`~prunectl.core.structure.criteria.CRITERIA`.
        threshold: remove units scoring below it.
        ratio: remove this fraction of the units, counted per layer (a unit of a group of coupled
            producers counts once for each): in every group (``scope="layer"``), or over the model
            (``"global"``), ranking units by their :func:`~prunectl.core.structure.criteria.lamp` scores.
        scope: ``"layer"`` or ``"global"``.
        round_to: keep unit counts multiples of it (where a layer has that many).
        min_keep: every group keeps at least this fraction of its units (and at least one), whatever
            the ratio, scope or threshold.
        include: producer-name patterns that may be pruned (default: all).
        exclude: producer-name patterns left whole.
        norms: how normalizations over the channels (LayerNormalization and kin) are met:
            ``"boundary"`` (default) leaves them whole and freezes the channels they normalize,
            ``"joint"`` prunes through them and the plan notes the change in their outputs;
            None is ``"joint"`` with ``prune_residual``, else ``"boundary"``.
        prune_residual: prune the residual stream's width too (Embedding outputs, attention passing
            its query's channels through), coupled across every block; implies ``norms="joint"``.
        layers: per-layer overrides ``(regex, ratio)``, ratio in [0, 1): a group whose producer (or, for
            units inside a layer, that layer) matches the first such pattern (``re.search``) removes that
            fraction of its units instead, and is left out of a global cut. With overrides the step's own
            ``ratio`` may be 0 (only the named layers are pruned). Needs ``ratio``, not ``threshold``.

    Raises:
        OptionError: on a missing, conflicting or out-of-range value.
    """

    criterion: str = "l1"
    threshold: float | None = None
    ratio: float | None = None
    scope: str = "layer"
    round_to: int = 1
    min_keep: float = DEFAULT_MIN_KEEP
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    norms: str | None = None
    prune_residual: bool = False
    layers: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        # Resolved here, so get_config records the mode the step runs with.
        object.__setattr__(self, "norms", residual_norms(self.norms, self.prune_residual))
        if (self.threshold is None) == (self.ratio is None):
            raise OptionError(
                "give exactly one of neuron_threshold and neuron_ratio. "
                f"Received: neuron_threshold={self.threshold}, neuron_ratio={self.ratio}"
            )
        if self.threshold is not None:
            validate_neuron_threshold(self.threshold)
        if self.ratio is not None and not (self.ratio == 0 and self.layers):
            validate_neuron_ratio(self.ratio)
        object.__setattr__(self, "layers", tuple((str(p), float(r)) for p, r in self.layers))
        for pattern, ratio in self.layers:
            compile_patterns([pattern], "a layer override")
            if self.ratio is None:
                raise OptionError(
                    "a layer override of {neuron_ratio} needs the step's own {neuron_ratio} (0 prunes only the "
                    f"named layers), not {{neuron_threshold}}. Received: {pattern!r} with "
                    f"{{neuron_threshold}} {self.threshold}",
                    "neuron_ratio",
                    "neuron_threshold",
                )
            check_number(ratio, "neuron_ratio", 0, 1, high_open=True)
        validate_round_to(self.round_to)
        validate_min_keep(self.min_keep)
        CRITERIA.get(self.criterion)
        if self.scope not in SCOPES:
            raise OptionError(f"scope must be one of {', '.join(SCOPES)}. Received: scope={self.scope!r}")
        if self.norms not in NORM_MODES:
            raise OptionError(f"norms must be one of {', '.join(NORM_MODES)}. Received: norms={self.norms!r}")

    def ratio_for(self, names) -> float | None:
        """The override ratio of the first pattern that matches one of ``names`` (a group's layers), or None."""
        for pattern, ratio in self.layers:
            if any(re.search(pattern, name) for name in names):
                return ratio
        return None

    def get_config(self) -> dict:
        config = {
            f"neuron_{k}" if k in ("criterion", "threshold", "ratio") else k: v
            for k, v in asdict(self).items()
            if k != "layers"
        }
        config = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
        config["layers"] = {p: {"neuron-ratio": r} for p, r in self.layers}
        return config

    @classmethod
    def from_config(cls, config: dict) -> NeuronPruning:
        """The step :meth:`get_config` describes.

        Raises:
            OptionError: as the constructor.
        """
        values: dict[str, Any] = {
            k[len("neuron_") :] if k.startswith("neuron_") else k: tuple(v) if isinstance(v, list) else v
            for k, v in config.items()
            if k != "layers"
        }
        layers = config.get("layers") or {}
        values["layers"] = (
            tuple((p, o.get("neuron-ratio", o.get("neuron_ratio"))) for p, o in layers.items())
            if isinstance(layers, dict)
            else tuple(layers)
        )
        return cls(**values)


@dataclass(frozen=True)
class GroupPlan:
    """What happens to one group of coupled units."""

    id: int
    producers: tuple[str, ...]
    units_before: int
    units_after: int
    dropped: tuple[int, ...]
    frozen: str | None
    inner: str | None = None


@dataclass(frozen=True)
class LayerPlan:
    """One layer's size before and after (units only for producers).

    ``group`` is a producer's group; ``groups`` every group its units belong to, in unit order: more than
    one (and ``group`` None) when a residual add lined its units up with several producers' groups.
    ``inner`` has ``(what, before, after)`` per kind of unit inside the layer (``("heads", 4, 2)``).
    """

    layer: str
    class_name: str
    group: int | None
    units_before: int | None
    units_after: int | None
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    groups: tuple[int, ...] = ()
    inner: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True)
class LayerEdit:
    """How one layer is rebuilt: config updates, weight slices ``(weight, axis, block, kept)``, a bias shift."""

    config: dict
    slices: tuple = ()
    bias_delta: np.ndarray | None = None


@dataclass(frozen=True)
class StructuralPlan:
    """The full plan: a value to print, test and record before any weight is touched.

    ``edits`` and the rows' ``layer`` are keyed by layer path: the name, preceded by the
    nested models a layer sits in (``encoder/dense``).
    ``notes`` name each normalization over the channels that the plan prunes through,
    with the change in its outputs where calibration data measured it
    (see :func:`prunectl.core.structure.norms.norm_notes`).
    """

    criterion: dict
    groups: tuple[GroupPlan, ...]
    layers: tuple[LayerPlan, ...]
    boundaries: tuple[tuple[str, str, str | None], ...]
    notes: tuple[dict, ...] = ()
    edits: dict = field(default_factory=dict, repr=False, compare=False)

    def totals(self) -> dict:
        """Units, params and multiply-adds summed over the model's layers.

        Each has ``before``, ``after``, ``ratio`` (before / after) and ``removed`` (the fraction
        removed, 1 - after / before). Units are counted per layer, as ``--neuron-ratio`` counts them,
        units inside a layer (heads) included;
        ``units`` also has ``prunable``, the units of the layers the step may prune (not left whole), and
        its ``removed`` is over those: the figure a ratio aims at.
        """
        sizes = {g.id: g.units_before for g in self.groups if not g.frozen}
        # Units inside a layer (attention heads) count like a producer's: once per layer holding them.
        prunable = sum(sizes.get(g, 0) for r in self.layers for g in r.groups)
        prunable += sum(g.units_before for g in self.groups if g.inner and not g.frozen)
        out: dict[str, dict] = {}
        for key in ("units", "params", "flops"):
            before = sum(getattr(r, f"{key}_before") or 0 for r in self.layers)
            after = sum(getattr(r, f"{key}_after") or 0 for r in self.layers)
            if key == "units":
                before += sum(b for r in self.layers for _, b, _ in r.inner)
                after += sum(a for r in self.layers for _, _, a in r.inner)
            out[key] = {
                "before": before,
                "after": after,
                "ratio": before / after if after else None,
                "removed": 1 - after / before if before else 0.0,
            }
            if key == "units":
                # Layers left whole keep every unit, so before - after is what the prunable ones lost.
                out[key].update(prunable=prunable, removed=(before - after) / prunable if prunable else 0.0)
        return out

    def to_dict(self) -> dict:
        """The plan as plain JSON-ready values (edits left out: they are arrays)."""
        return {
            "criterion": self.criterion,
            "groups": [{**asdict(g), "producers": list(g.producers), "dropped": list(g.dropped)} for g in self.groups],
            "layers": [asdict(r) for r in self.layers],
            "boundaries": [{"layer": n, "class": c, "reason": r} for n, c, r in self.boundaries],
            "notes": [dict(note) for note in self.notes],
            "totals": self.totals(),
        }


def choose_units(
    scores: dict[int, np.ndarray],
    step: NeuronPruning,
    producers: dict[int, int] | None = None,
    names: dict[int, list[str]] | None = None,
) -> dict[int, np.ndarray]:
    """The sorted indices each group keeps: the best-scoring units, at least the floor, rounded up to ``round_to``.

    The floor is ``max(1, ceil(min_keep * size))``. Ties keep the lower index. With ``scope="global"``
    and a ratio, one cut runs over all groups' :func:`~prunectl.core.structure.criteria.lamp` scores,
    lowest first, until the units removed reach ``ratio`` of all units (a unit of a group counting once
    per producer) without passing it; a group at its floor gives up no more.

    Args:
        scores: each group's unit scores, by group id.
        step: the structural step.
        producers: how many layers each group's units belong to (default 1 each).
        names: each group's layer names, matched against the step's per-layer overrides.

    Returns:
        The kept indices, by group id.
    """
    overrides = {g: step.ratio_for((names or {}).get(g, ())) for g in scores} if step.layers else {}
    ratios = {g: r for g, r in overrides.items() if r is not None}
    ids = sorted(scores)
    weight = {g: (producers or {}).get(g, 1) for g in ids}
    floor = {g: min(len(scores[g]), max(1, math.ceil(step.min_keep * len(scores[g]) - 1e-9))) for g in ids}
    counts = {}
    cut = [g for g in ids if g not in ratios]
    if step.ratio is not None and step.scope == "global" and cut:
        counts = _global_cut({g: scores[g] for g in cut}, step.ratio, weight, floor)
    for gid in ids:
        size = len(scores[gid])
        ratio = ratios.get(gid, step.ratio)
        if gid not in counts:
            counts[gid] = (
                size - math.floor(ratio * size + 1e-9)
                if ratio is not None
                else int(np.count_nonzero(scores[gid] >= step.threshold))
            )
        if gid in ratios and ratios[gid] == 0:
            counts[gid] = size  # an override of 0 keeps the group whole, whatever round_to says
            continue
        counts[gid] = min(size, math.ceil(max(floor[gid], counts[gid]) / step.round_to) * step.round_to)
    return {g: np.sort(np.argsort(-scores[g], kind="stable")[: counts[g]]) for g in ids}


def _global_cut(scores: dict[int, np.ndarray], ratio: float, weight: dict[int, int], floor: dict[int, int]) -> dict:
    ids = sorted(scores)
    flat = np.concatenate([lamp(scores[g]) for g in ids])
    owner = np.concatenate([np.full(len(scores[g]), g) for g in ids])
    target = ratio * sum(len(scores[g]) * weight[g] for g in ids) + 1e-9
    removable = {g: len(scores[g]) - floor[g] for g in ids}
    removed = dict.fromkeys(ids, 0)
    total = 0
    for index in np.argsort(flat, kind="stable"):
        gid = int(owner[index])
        if removed[gid] >= removable[gid]:
            continue
        if total + weight[gid] > target:
            break
        removed[gid] += 1
        total += weight[gid]
    return {g: len(scores[g]) - removed[g] for g in ids}


def plan_structure(model, step: NeuronPruning, x: np.ndarray | None = None) -> StructuralPlan:
    """Plan which units of ``model`` to remove; touches no weight.

    Args:
        model: a built Sequential or Functional Keras model.
        step: the structural step.
        x: calibration inputs (required by activation criteria; also measure how much
            pruning through a normalization over the channels changes its outputs).

    Returns:
        The :class:`StructuralPlan`.

    Raises:
        OptionError: the criterion needs data and ``x`` is None.
        SelectionError: no unit can be removed, or a pattern matches no prunable layer.
        StructureError: the model has no layer graph.
    """
    criterion = CRITERIA.get(step.criterion)()
    if criterion.needs_data and x is None:
        raise OptionError(
            f"the {step.criterion} criterion needs calibration data; give --data FILE. "
            f"Received: neuron_criterion={step.criterion!r}"
        )
    graph = build_graph(model, step.include, step.exclude, step.norms or DEFAULT_NORMS, step.prune_residual)
    if all(group.frozen for group in graph.groups):
        shown = "; ".join(f"{i.name} ({i.class_name}): {i.reason}" for i in graph.boundaries[:4]) or "none"
        raise SelectionError(
            "no prunable units: every layer's units reach a model output, a boundary, or are not selected "
            f"(boundaries: {shown}). Received: include={list(step.include)}, exclude={list(step.exclude)}"
        )
    stats = calibrate(graph, x, criterion.batch_size) if x is not None and criterion.needs_data else None
    producers = {g.id: len(g.producers) for g in graph.groups}
    names = group_names(graph)
    _check_overrides(step, graph, names)
    keep = choose_units(criterion.scores(graph, stats), step, producers, names)
    edits, rows = {}, []
    for info in graph.layers:
        edit = _edit(info, keep, stats)
        if edit is not None:
            edits[info.name] = edit
        if info.weights:
            rows.append(_row(info, edit))
    edits.update(_nested_edits(graph.nested, keep))
    groups = tuple(
        GroupPlan(
            g.id,
            tuple(g.producers),
            g.size,
            len(keep.get(g.id, range(g.size))),
            tuple(int(i) for i in np.setdiff1d(np.arange(g.size), keep[g.id])) if g.id in keep else (),
            g.frozen,
            g.inner,
        )
        for g in graph.groups
        if g.producers
    )
    boundaries = tuple((i.name, i.class_name, _boundary_reason(i, graph.groups)) for i in graph.boundaries)
    config = {
        "name": step.criterion,
        **criterion.get_config(),
        **({"global_score": "lamp"} if step.scope == "global" and step.ratio is not None else {}),
    }
    notes = norm_notes(graph, keep, x, getattr(criterion, "batch_size", 256))
    return StructuralPlan(config, groups, tuple(rows), boundaries, notes, edits)


def group_names(graph) -> dict[int, list[str]]:
    """Each prunable group's layer names: its producers, or the layer its units live inside (heads)."""
    names: dict[int, list[str]] = {g.id: list(g.producers) for g in graph.groups if not g.frozen}
    for info in graph.layers:
        for _, gid in info.inner:
            if gid in names and info.name not in names[gid]:
                names[gid].append(info.name)
    return names


def _check_overrides(step: NeuronPruning, graph, names: dict[int, list[str]]) -> None:
    for pattern, _ in step.layers:
        if not any(re.search(pattern, name) for group in names.values() for name in group):
            shown = ", ".join(sorted({n for group in names.values() for n in group})[:12])
            raise SelectionError(
                f"layer override pattern matches no prunable layer (prunable: {shown}). Received: {pattern!r}"
            )


def _nested_edits(nested: dict, keep: dict[int, np.ndarray]) -> dict[str, LayerEdit]:
    """A nested model's edit: the widths of its inputs (``input_widths``), where they lose channels."""
    edits = {}
    for path, layouts in nested.items():
        widths = [len(kept_features(layout, keep)) for layout in layouts]
        if widths != [layout_width(layout) for layout in layouts]:
            edits[path] = LayerEdit({"input_widths": widths})
    return edits


def _boundary_reason(info: LayerInfo, groups) -> str | None:
    """Why a layer's channels are left whole, saying so when units inside it are pruned all the same."""
    inside = [inner.name for inner, gid in info.inner if not groups[gid].frozen]
    if not inside:
        return info.reason
    return f"{info.reason}; its channels are left whole, pruned inside it: {' and '.join(inside)}"


def _edit(info: LayerInfo, keep: dict[int, np.ndarray], stats) -> LayerEdit | None:
    rule = info.rule
    config, slices = inner_edit(info, keep)
    if rule is None:
        return LayerEdit(config, tuple(slices)) if config else None
    delta = None
    layer_config = info.config
    if info.in_layout is not None:
        kept = kept_features(info.in_layout, keep)
        width = layout_width(info.in_layout)
        if len(kept) < width:
            for weight, axis, block_key in rule.in_axes:
                slices.append((weight, axis, layer_config[block_key] if block_key else 1, kept))
            if rule.width:
                config[rule.width] = len(kept)
            if rule.kind == "reshape" and layer_config["target_shape"][-1] != -1:
                config["target_shape"] = [*layer_config["target_shape"][:-1], len(kept)]
            if stats is not None and info.name in stats and rule.fold:
                dropped = np.setdiff1d(np.arange(width), kept)
                delta = stats[info.name].mean[dropped] @ input_map(info)[dropped]
                if not layer_config.get("use_bias", True):
                    config["use_bias"] = True
    kept_out = kept_features(info.out_layout, keep) if info.out_layout is not None else None
    if kept_out is not None and rule.units and len(kept_out) < layer_config[rule.units]:
        config[rule.units] = len(kept_out)
        slices += [_out_slice(out_axis, kept_out, layer_config[rule.units]) for out_axis in rule.out_axes]
        delta = None if delta is None else delta[kept_out]
    if not (config or slices):
        return None
    return LayerEdit(config, tuple(slices), delta)


def _out_slice(out_axis: tuple, kept: np.ndarray, units: int) -> tuple:
    """The slice ``(weight, axis, block, kept)`` of one of a producer's ``out_axes`` (gate runs expanded)."""
    weight, axis, *gates = out_axis
    return (weight, axis, 1, gated(kept, gates[0], units) if gates else kept)


def input_map(info: LayerInfo) -> np.ndarray:
    """A producer's weights as an ``(input features, units)`` matrix: what a constant input adds to each unit.

    Exact for Dense and for unpadded convolutions; near the border of a padded
    convolution fewer kernel taps see the input, so folding there is approximate.
    """
    weights = {v.name: np.asarray(v.numpy(), dtype=np.float64) for v in info.layer.weights}
    fold = info.rule.fold if info.rule else None
    if fold == "dense":
        return weights["kernel"]
    kernel = weights["kernel" if fold != "separable" else "depthwise_kernel"]
    summed = kernel.reshape(-1, *kernel.shape[-2:]).sum(0)
    if fold == "conv":
        return summed
    if fold == "transpose":
        return summed.T
    pointwise = weights["pointwise_kernel"].reshape(summed.shape[0], summed.shape[1], -1)
    return np.einsum("cm,cmf->cf", summed, pointwise)


def _take(value: np.ndarray, axis: int, block: int, kept: np.ndarray) -> np.ndarray:
    if block > 1:
        kept = (kept[:, None] * block + np.arange(block)[None, :]).ravel()
    return np.take(value, kept, axis=axis)


def _new_shapes(info: LayerInfo, edit: LayerEdit | None) -> list[tuple[str, tuple]]:
    """``(variable name, shape)`` of every variable of the layer after ``edit``.

    A list, not a dict by name: a nested model, MultiHeadAttention or
    Bidirectional holds several variables of one name, and each one counts.
    """
    shapes = [(v.name, list(v.shape)) for v in info.weights]
    if edit is None:
        return [(name, tuple(shape)) for name, shape in shapes]
    for (_, shape), slices in zip(shapes, slices_by_position(info.layer, edit.slices)):
        for axis, block, kept in slices:
            shape[axis] = len(kept) * block
    units = info.rule.units if info.rule else None
    if edit.config.get("use_bias") and all(name != "bias" for name, _ in shapes) and units:
        shapes.append(("bias", [edit.config.get(units, info.config[units])]))
    return [(name, tuple(shape)) for name, shape in shapes]


def _row(info: LayerInfo, edit: LayerEdit | None) -> LayerPlan:
    before_shapes, after_shapes = _new_shapes(info, None), _new_shapes(info, edit)
    # layer_macs reads kernel-like weights by name; those are unique in the layers it counts.
    before, after = dict(reversed(before_shapes)), dict(reversed(after_shapes))
    in_shape, out_shape = _channels_last(info.shapes, info.axis)
    key = info.rule.units if info.rule else None
    units = info.config.get(key) if key else None
    return LayerPlan(
        info.name,
        info.class_name,
        info.out_group,
        units,
        edit.config.get(key, units) if edit and key and units is not None else units,
        sum(math.prod(s) for _, s in before_shapes),
        sum(math.prod(s) for _, s in after_shapes),
        layer_macs(info.class_name, before, in_shape, out_shape, before_shapes),
        layer_macs(info.class_name, after, in_shape, out_shape, after_shapes),
        tuple(g for g, _ in info.out_layout[0].segments) if info.out_layout else (),
        tuple(
            (
                inner.name,
                info.config[inner.count] // inner.per_unit,
                (edit.config if edit else info.config).get(inner.count, info.config[inner.count]) // inner.per_unit,
            )
            for inner, _ in info.inner
        ),
    )


def _channels_last(shapes: tuple, axis: int) -> tuple:
    """A layer's ``(input shape, output shape)`` with the channel axis last, as ``layer_macs`` counts positions.

    ``axis`` is the input's channel axis; an output of the same rank has it there too.
    """
    in_shape, out_shape = shapes
    if not in_shape or axis % len(in_shape) == len(in_shape) - 1:
        return shapes
    if len(out_shape) == len(in_shape):
        out_shape = (*out_shape[:axis], *out_shape[axis + 1 :], out_shape[axis])
    return (*in_shape[:axis], *in_shape[axis + 1 :], in_shape[axis]), out_shape


def apply_plan(model, plan: StructuralPlan, unsafe: bool = False):
    """Rebuild ``model`` as a plain Keras model with the plan's units removed.

    Every layer is rebuilt from its config (updated where the plan says) by
    ``keras.models.clone_model`` (a nested model with its own layers' edits, found by
    path); weights are copied, sliced where units were removed, and shifted by
    folded biases. ``model`` is left unchanged. A Functional subclass (a keras_hub
    backbone) comes out as a plain Functional model (see :mod:`prunectl.core.structure.backbone`).

    Args:
        model: the model the plan was made for.
        plan: the plan of :func:`plan_structure`.
        unsafe: allow Lambda-layer code in ``model`` to be rebuilt (a model loaded with ``unsafe``).

    Returns:
        The new, smaller ``keras.Model`` (uncompiled).
    """
    from prunectl.core.io.keras_io import import_keras
    from prunectl.core.structure.backbone import keep_readable, readable_config
    from prunectl.core.structure.keras_graph import deserialization_scope, is_graph_model

    keras = import_keras()

    def rebuild(prefix: str):
        def clone(layer):
            # A nested model is rebuilt with its own layers' edits, keeping its class (a Sequential stays one).
            if is_graph_model(layer):
                edit = plan.edits.get(prefix + layer.name)
                inputs = None
                if edit is not None:  # its input layers take the pruned widths
                    widths = edit.config["input_widths"]
                    new = [
                        keras.Input(batch_shape=(*t.shape[:-1], w), dtype=t.dtype) for t, w in zip(layer.inputs, widths)
                    ]
                    inputs = keras.tree.pack_sequence_as(layer.input, new)
                return keras.models.clone_model(
                    layer, input_tensors=inputs, clone_function=rebuild(f"{prefix}{layer.name}/")
                )
            config = readable_config(layer)
            edit = plan.edits.get(prefix + layer.name)
            config.update(edit.config if edit is not None else {})
            rebuilt = layer.__class__.from_config(config)
            keep_readable(rebuilt)
            return rebuilt

        return clone

    with deserialization_scope(unsafe):
        pruned = keras.models.clone_model(model, clone_function=rebuild(""))
    _copy_weights(model, pruned, plan, "")
    return pruned


def _copy_weights(old_model, new_model, plan: StructuralPlan, prefix: str) -> None:
    from prunectl.core.structure.keras_graph import is_graph_model

    # By name once: model.get_layer walks every layer, which made this loop quadratic (0.1 s on DenseNet121).
    originals = {layer.name: layer for layer in old_model.layers}
    for new in new_model.layers:
        if new.__class__.__name__ == "InputLayer":  # clone_model renames inputs; they hold no weights
            continue
        old = originals[new.name]
        if is_graph_model(old):
            _copy_weights(old, new, plan, f"{prefix}{old.name}/")
            continue
        edit = plan.edits.get(prefix + new.name)
        if edit is None:
            new.set_weights(old.get_weights())
            continue
        new.set_weights(_edited_weights(old, new, edit))


def _edited_weights(old, new, edit: LayerEdit) -> list[np.ndarray]:
    # The rebuilt layer creates its variables in the old one's order (names may repeat, and
    # unnamed ones get fresh names); a bias the plan adds (use_bias=True) comes after them.
    arrays = []
    slices = slices_by_position(old, edit.slices)
    for i, variable in enumerate(new.weights):
        if i < len(old.weights):
            value = old.weights[i].numpy()
            for axis, block, kept in slices[i]:
                value = _take(value, axis, block, kept)
        else:
            # Created once, at the pruned size: nothing to slice.
            value = np.zeros(variable.shape, variable.dtype)
        if variable.name == "bias" and edit.bias_delta is not None:
            value = value + edit.bias_delta.astype(value.dtype)
        arrays.append(value)
    return arrays


def model_cost(model) -> dict:
    """The model's params and multiply-adds, counted as a structural plan counts them (its ``before``).

    Args:
        model: a built Keras model with a layer graph.

    Returns:
        ``{"params", "flops"}`` summed over the layers that hold weights.
    """
    graph = build_graph(model, (), (), DEFAULT_NORMS, False)
    rows = [_row(info, None) for info in graph.layers if info.weights]
    return {"params": sum(r.params_before for r in rows), "flops": sum(r.flops_before for r in rows)}


def combine_plans(plans: list[StructuralPlan]) -> StructuralPlan:
    """Several structural steps' plans as one: each layer and group from before the first to after the last.

    The kept indices of later steps count in the already pruned model, so a combined
    group lists no dropped indices when more than one step pruned it.
    """
    if len(plans) == 1:
        return plans[0]
    first, last = plans[0], plans[-1]
    after = {row.layer: row for row in last.layers}
    rows = tuple(
        replace(
            row,
            units_after=after[row.layer].units_after if row.layer in after else row.units_after,
            params_after=after[row.layer].params_after if row.layer in after else row.params_after,
            flops_after=after[row.layer].flops_after if row.layer in after else row.flops_after,
            inner=tuple(
                (name, before, dict((n, a) for n, _, a in after[row.layer].inner).get(name, a_))
                for name, before, a_ in row.inner
            )
            if row.layer in after
            else row.inner,
        )
        for row in first.layers
    )
    final = {g.producers: g for g in last.groups}
    # A group pruned by one step only keeps that step's indices: units before it were all still there.
    dropped = {
        g.producers: [h.dropped for p in plans for h in p.groups if h.producers == g.producers and h.dropped]
        for g in first.groups
    }
    groups = tuple(
        replace(
            g,
            units_after=final[g.producers].units_after if g.producers in final else g.units_after,
            dropped=dropped[g.producers][0] if len(dropped[g.producers]) == 1 else (),
        )
        for g in first.groups
    )
    notes = tuple(note for plan in plans for note in plan.notes)
    criterion = {**first.criterion, "steps": len(plans)}
    return StructuralPlan(criterion, groups, rows, first.boundaries, notes)
