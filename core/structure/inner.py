"""Units inside one layer (attention heads, a block's feed-forward units): groups of their own.

A layer class's :class:`~prunectl.core.layers.Inner` entries name the units and
the weights they slice by *path* (sub-layer attribute path, then variable name;
``*`` for every item of a list). Each becomes one group of the channel graph, never
coupled to the layers around the layer: removing units changes only the layer's
config (``count``) and the weights the paths name. This module resolves those paths
on a live layer, makes the groups, scores them by weight norm or by their measured
contribution, and turns kept units into the layer's config update and weight slices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from prunectl.core.layers import Inner, get_spec

if TYPE_CHECKING:
    from prunectl.core.structure.graph import ChannelGraph, LayerInfo
    from prunectl.core.structure.layout import Groups


def _names(variable_name: str, weight: str) -> bool:
    """Whether a variable is ``weight``: Keras names an unnamed variable ``variable``, ``variable_1``, ..."""
    return variable_name == weight or (
        variable_name.startswith(f"{weight}_") and variable_name[len(weight) + 1 :].isdigit()
    )


def _objects(root: Any, parts: list[str]) -> list[Any]:
    """The objects an attribute path reaches from ``root``; ``*`` expands a list attribute."""
    found = [root]
    for part in parts:
        step = []
        for obj in found:
            if part == "*":
                step.extend(obj)
            else:
                value = getattr(obj, part, None)
                if value is not None:
                    step.append(value)
        found = step
    return found


def resolve(layer: Any, path: str) -> list[Any]:
    """The variables of ``layer`` a weight path names (see :class:`~prunectl.core.layers.Inner`).

    A path without ``/`` names the layer's variables by name anywhere in it (a rule's
    ``in_axes``/``out_axes`` weights); with ``/``, the sub-layer path is followed by
    ``getattr`` and the variable is that sub-layer's.

    Args:
        layer: a live Keras layer.
        path: ``"kernel"``, ``"query_dense/kernel"``, ``"encoder_layers/*/mlp/dense_1/kernel"``.

    Returns:
        The matching variables, in the layer's weight order (empty if none).
    """
    *parts, name = path.split("/")
    owners = _objects(layer, parts)
    ids = {id(v) for owner in owners for v in (getattr(owner, "weights", None) or []) if _names(v.name, name)}
    return [v for v in getattr(layer, "weights", None) or [] if id(v) in ids]


def slices_by_position(layer: Any, slices: tuple) -> list[list[tuple[int, int, np.ndarray]]]:
    """The ``(axis, block, kept)`` slices of each of ``layer.weights``, from a plan's ``(path, axis, block, kept)``."""
    weights = list(getattr(layer, "weights", None) or [])
    position = {id(v): i for i, v in enumerate(weights)}
    out: list[list[tuple[int, int, np.ndarray]]] = [[] for _ in weights]
    for path, axis, block, kept in slices:
        for variable in resolve(layer, path):
            out[position[id(variable)]].append((axis, block, kept))
    return out


def add_inner_groups(info: LayerInfo, groups: Groups) -> None:
    """Give each :class:`Inner` of ``info``'s class a group of its own (recorded in ``info.inner``).

    A group is frozen when the units' check refuses the config, or when only one unit exists.
    """
    spec = get_spec(info.class_name)
    if spec is None or info.is_op or not spec.inner:
        return
    entries = []
    for inner in spec.inner:
        count = info.config.get(inner.count)
        if not isinstance(count, int) or count < 1 or count % inner.per_unit:
            continue
        size = count // inner.per_unit
        try:
            frozen = inner.check(info.config) if inner.check else None
        except Exception as exc:  # a check written for another config
            frozen = f"its {inner.name} check failed ({type(exc).__name__}: {exc})"
        if frozen is None and size == 1:
            frozen = f"one of {inner.name}"
        gid = groups.new(size, frozen and f"{info.name} {inner.name}: {frozen}", producer=info.name)
        entries.append((inner, gid))
    info.inner = tuple(entries)


def inner_edit(info: LayerInfo, keep: dict[int, np.ndarray]) -> tuple[dict, list[tuple]]:
    """The config update and ``(path, axis, block, kept)`` slices that remove ``info``'s inner units not kept."""
    config: dict[str, Any] = {}
    slices: list[tuple] = []
    for inner, gid in info.inner:
        if gid not in keep:
            continue
        size = info.config[inner.count] // inner.per_unit
        kept = np.asarray(keep[gid])
        if len(kept) >= size:
            continue
        config[inner.count] = len(kept) * inner.per_unit
        for path, axis in inner.slices:
            variables = resolve(info.layer, path)
            if variables:
                slices.append((path, axis, int(variables[0].shape[axis]) // size, kept))
    return config, slices


def unit_norms(info: LayerInfo, inner: Inner, size: int, order: int) -> np.ndarray:
    """The ``order``-norm of each unit's entries in every weight its slices name."""
    total = np.zeros(size)
    for path, axis in inner.slices:
        for variable in resolve(info.layer, path):
            value = np.moveaxis(np.abs(np.asarray(variable.numpy(), dtype=np.float64)), axis, 0)
            total += (value.reshape(size, -1) ** order).sum(1)
    return total ** (1 / order)


def inner_key(layer: str, inner: Inner) -> str:
    """The calibration statistics key of a layer's inner units (layer names never hold ``/``)."""
    return f"{layer}/{inner.name}"


def contributions(graph: ChannelGraph, x: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Each inner unit's mean absolute contribution on ``x``, where its ``Inner.observe`` says.

    The observed sub-layer's input is split into the units along the observed axis; a unit's
    contribution is its part of the input times its part of the sub-layer's kernel, and its score
    the mean absolute value of that over samples, positions and output features.

    Returns:
        One score per unit, by :func:`inner_key`.
    """
    from prunectl.core.structure.keras_graph import record_inputs

    watched = []
    for info in graph.layers:
        for inner, gid in info.inner:
            if inner.observe is None or graph.groups[gid].frozen:
                continue
            path, axis = inner.observe
            subs = _objects(info.layer, path.split("/")) if path else [info.layer]
            kernels = [resolve(sub, "kernel") for sub in subs]
            if subs and all(kernels):
                watched.append((info, inner, graph.groups[gid].size, axis, subs, [k[0] for k in kernels]))
    if not watched:
        return {}
    model = _model(graph)
    sums = {inner_key(info.name, inner): np.zeros(size) for info, inner, size, *_ in watched}
    rows = dict.fromkeys(sums, 0)
    with record_inputs([sub for *_, subs, _ in watched for sub in subs]) as seen:
        for start in range(0, len(x), batch_size):
            for key in seen:
                seen[key].clear()
            model(x[start : start + batch_size], training=False)
            for info, inner, size, axis, subs, kernels in watched:
                key = inner_key(info.name, inner)
                for sub, kernel in zip(subs, kernels):
                    for value in seen[id(sub)]:
                        score, n = _contribution(np.asarray(value, dtype=np.float64), axis, kernel.numpy(), size)
                        sums[key] += score
                        rows[key] += n
    return {key: sums[key] / max(rows[key], 1) for key in sums}


def _model(graph: ChannelGraph):
    from prunectl.core.io.keras_io import import_keras

    keras = import_keras()
    outputs = [t for info in graph.layers for t in ([info.layer.output] if info.inner else [])]
    inputs = graph.inputs[0] if len(graph.inputs) == 1 else graph.inputs
    return keras.Model(inputs, outputs)


def _contribution(value: np.ndarray, axis: int, kernel: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """Sum over rows of each unit's mean absolute contribution, and the rows counted."""
    axis = axis % value.ndim
    trailing = value.ndim - axis  # the kernel's leading axes are the input's axes from ``axis`` on
    rows = int(np.prod(value.shape[:axis]))
    width = value.shape[axis]
    flat = value.reshape(rows, size, width // size, -1)
    weights = np.asarray(kernel, dtype=np.float64).reshape(size, width // size, -1, *kernel.shape[trailing:])
    weights = weights.reshape(size, width // size, flat.shape[-1], -1)
    parts = np.einsum("rubk,ubko->ruo", flat, weights)
    return np.abs(parts).mean(-1).sum(0), rows
