"""A saved model's layer graph, checked from its config alone: every reference names a layer, inputs fit kernels.

Keras rebuilds a Functional model by calling each layer on the tensors its
``inbound_nodes`` name, and a Sequential one by calling its layers in order; a
config whose graph names a layer it lacks (``Unknown layer: pool``), or feeds a
Dense 8 channels where its kernel holds 64 rows, does not load. The file engine
copies the config verbatim, so it must refuse such a file itself.

The channel sizes are carried cheaply along the graph: the size of each layer
output's last axis, where the layer table (:mod:`prunectl.core.layers`) says how
the layer moves channels, and ``None`` (no check) everywhere else.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prunectl.core.io import keras_api
from prunectl.core.layers import get_spec, is_nested_model, op_key
from prunectl.core.layers.builtin import BUILTIN

# Weight shapes by weight name for one layer, or None where the file's weights are not known by name.
Weights = Callable[[str], "dict[str, tuple[int, ...]] | None"]


@dataclass(frozen=True)
class _Out:
    """What is known of one layer output: its rank and its last axis's size."""

    rank: int | None = None
    last: int | None = None


_UNKNOWN = _Out()
_Ref = tuple[str, object, object]  # (layer name, node index, tensor index)
_Key = tuple[str, object]  # (layer name, node index): one call of a layer


def graph_problems(config: object, weights: Weights) -> Iterator[str]:
    """Every graph reference to a missing layer, and every input a layer's weights cannot read, as text.

    Args:
        config: a model config (``{"class_name": ..., "config": {"layers": [...]}}``); nested models are walked.
        weights: the shapes of a layer's weights by name, or None where they are not known.

    Yields:
        One line per problem, e.g. ``layer 'fc1' (Dense): its input's last axis has size 8 but its kernel
        has shape (64, 256)``.
    """
    if not isinstance(config, dict):
        return
    inner = config.get("config")
    if not isinstance(inner, dict) or not isinstance(inner.get("layers"), list):
        return
    layers = [layer for layer in inner["layers"] if isinstance(layer, dict)]
    if "input_layers" in inner or "output_layers" in inner or any("inbound_nodes" in layer for layer in layers):
        yield from _functional_graph(config, inner, layers, weights)
    else:
        yield from _sequential(layers, weights)
    for layer in layers:
        yield from graph_problems(layer, weights)


def _name(layer: dict) -> str | None:
    """The name Keras files a Functional model's layer under: its ``name``, else its config's."""
    name = layer.get("name")
    if not isinstance(name, str):
        inner = layer.get("config")
        name = inner.get("name") if isinstance(inner, dict) else None
    return name if isinstance(name, str) else None


def _label(layer: dict) -> str:
    return f"layer {_name(layer)!r} ({layer.get('class_name')})"


def _tensor_refs(value: object) -> Iterator[_Ref]:
    """The ``keras_history`` of every serialized Keras tensor in ``value``."""
    if isinstance(value, list):
        for item in value:
            yield from _tensor_refs(item)
    elif isinstance(value, dict):
        inner = value.get("config")
        if value.get("class_name") == "__keras_tensor__" and isinstance(inner, dict):
            history = inner.get("keras_history")
            if isinstance(history, list) and len(history) >= 3 and isinstance(history[0], str):
                yield history[0], history[1], history[2]
            return
        for item in value.values():
            yield from _tensor_refs(item)


# The keys Keras's deserializer reads from a serialized Keras tensor (``serialization_lib``).
_TENSOR_KEYS = ("shape", "dtype", "keras_history")


def _tensor_missing(value: object) -> str | None:
    """A key Keras reads that a serialized Keras tensor in ``value`` lacks, or None."""
    if isinstance(value, list):
        return next((m for m in map(_tensor_missing, value) if m), None)
    if not isinstance(value, dict):
        return None
    inner = value.get("config")
    if value.get("class_name") == "__keras_tensor__":
        if not isinstance(inner, dict):
            return "config"
        return next((key for key in _TENSOR_KEYS if key not in inner), None)
    return next((m for m in map(_tensor_missing, value.values()) if m), None)


def _node_refs(node: object, kwargs: bool = True) -> list[_Ref]:
    """The tensors one inbound node calls its layer on: the ``.keras`` form, or the legacy ``[name, node, tensor]``."""
    if isinstance(node, dict):
        refs = list(_tensor_refs(node.get("args")))
        return refs + list(_tensor_refs(node.get("kwargs"))) if kwargs else refs
    if isinstance(node, list):
        return [
            (item[0], item[1], item[2])
            for item in node
            if isinstance(item, list) and len(item) >= 3 and isinstance(item[0], str)
        ]
    return []


def _io_refs(value: object) -> Iterator[_Ref]:
    """The ``[name, node, tensor]`` leaves of a Functional config's ``input_layers``/``output_layers``."""
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
        yield value[0], value[1], value[2]
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _io_refs(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _io_refs(item)


def _nodes(layer: dict) -> list:
    nodes = layer.get("inbound_nodes")
    return nodes if isinstance(nodes, list) else []


def _functional_graph(config: dict, inner: dict, layers: list[dict], weights: Weights) -> Iterator[str]:
    names = {_name(layer) for layer in layers} - {None}
    for layer in layers:
        for node in _nodes(layer):
            missing = _tensor_missing(node)
            if missing:
                yield f"{_label(layer)}: an input tensor of its inbound_nodes lacks {missing!r}"
                return
            for ref in _node_refs(node):
                if ref[0] not in names:
                    yield f"{_label(layer)}: its input names layer {ref[0]!r}, which the config does not have"
                    return
    for key in ("input_layers", "output_layers"):
        for ref in _io_refs(inner.get(key)):
            if ref[0] not in names:
                yield (
                    f"model {inner.get('name')!r} ({config.get('class_name')}): its {key} name layer "
                    f"{ref[0]!r}, which the config does not have"
                )
                return
    yield from _functional_sizes(layers, weights)


def _functional_sizes(layers: list[dict], weights: Weights) -> Iterator[str]:
    """Carry each node's output size along the graph in dependency order (Kahn), checking each call."""
    calls: dict[_Key, tuple[dict, list[_Ref] | None]] = {}
    for layer in layers:
        name = _name(layer)
        if name is None:
            continue
        if layer.get("class_name") == "InputLayer":
            calls[(name, 0)] = (layer, None)
            continue
        for index, node in enumerate(_nodes(layer)):
            calls[(name, index)] = (layer, _node_refs(node, kwargs=False))
    waiting: dict[_Key, int] = {}
    dependents: dict[_Key, list[_Key]] = defaultdict(list)
    for key, (_, refs) in calls.items():
        inputs = [(r[0], r[1]) for r in refs or () if (r[0], r[1]) in calls]
        waiting[key] = len(inputs)
        for source in inputs:
            dependents[source].append(key)
    ready = [key for key, count in waiting.items() if count == 0]
    outs: dict[_Key, _Out] = {}
    while ready:
        key = ready.pop()
        layer, refs = calls[key]
        if refs is None:
            outs[key] = _input_out(layer.get("config"))
        else:
            ins = [outs.get((r[0], r[1]), _UNKNOWN) if r[2] == 0 else _UNKNOWN for r in refs]
            out, problem = _call(layer, ins, weights)
            if problem:
                yield problem
                return
            outs[key] = out
        for dependent in dependents.get(key, ()):
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                ready.append(dependent)


def _sequential(layers: list[dict], weights: Weights) -> Iterator[str]:
    current = _UNKNOWN
    for position, layer in enumerate(layers):
        inner = layer.get("config")
        if layer.get("class_name") == "InputLayer":
            current = _input_out(inner)
            continue
        if position == 0 and isinstance(inner, dict) and "batch_input_shape" in inner:
            current = _input_out({"batch_input_shape": inner["batch_input_shape"]})  # Keras adds an InputLayer
        current, problem = _call(layer, [current], weights)
        if problem:
            yield problem
            return


def _input_out(config: object) -> _Out:
    if not isinstance(config, dict):
        return _UNKNOWN
    shape = config.get("batch_shape", config.get("batch_input_shape"))
    if not isinstance(shape, list) or not shape:
        return _UNKNOWN
    last = shape[-1]
    return _Out(len(shape), last if isinstance(last, int) and not isinstance(last, bool) else None)


def table_spec(class_name: str, keras: bool):
    """The layer table's spec for a layer of ``class_name``; None for a custom class that only shares a Keras name.

    Args:
        class_name: the class as the config names it.
        keras: whether the config means Keras's own class (see :func:`keras_api.resolve_class`).
    """
    spec = get_spec(class_name)
    if spec is not None and not keras and spec is BUILTIN.get(class_name):
        return None
    return spec


def _spec(layer: dict):
    class_name = layer.get("class_name")
    if not isinstance(class_name, str) or is_nested_model(class_name):
        return None
    module = layer.get("module")
    if isinstance(module, str) and ".ops" in module:
        return get_spec(op_key(class_name))
    return table_spec(class_name, keras_api.resolve_class(layer)[1])


def _call(layer: dict, ins: list[_Out], weights: Weights) -> tuple[_Out, str | None]:
    """The output of one call of ``layer`` on ``ins``, and why its weights cannot read them (or None)."""
    spec = _spec(layer)
    rule = spec.rule if spec is not None else None
    config = layer.get("config")
    if rule is None or not isinstance(config, dict) or not ins:
        return _UNKNOWN, None
    if config.get("data_format", "channels_last") != "channels_last":
        return _UNKNOWN, None  # its channels are not the last axis
    rank = ins[0].rank
    if rule.check is not None:
        if rank is None:
            return _UNKNOWN, None
        try:
            if rule.check(config, rank):
                return _UNKNOWN, None
        except (TypeError, ValueError, ZeroDivisionError, AttributeError):
            return _UNKNOWN, None  # a crafted config value: Keras's own checks judge it
    if rule.kind == "merge":
        return _merge(layer, ins)
    if rule.kind == "concat":
        axis = config.get("axis", -1)
        lasts = [i.last for i in ins]
        if (axis == -1 or (rank is not None and axis == rank - 1)) and None not in lasts:
            return _Out(rank, sum(lasts)), None  # type: ignore[arg-type]
        return _UNKNOWN, None
    if rule.kind not in ("producer", "passthrough", "normalize") or len(ins) != 1:
        return _UNKNOWN, None
    held = _weights(layer, weights)
    channels = ins[0].last
    for weight, axis, block in rule.in_axes:
        shape = held.get(weight)
        if block is None and shape is not None and channels is not None and -len(shape) <= axis < len(shape):
            if shape[axis] != channels:
                return _UNKNOWN, (
                    f"{_label(layer)}: its input's last axis has size {channels} but its {weight} "
                    f"has shape {shape}, which takes {shape[axis]}"
                )
    if rule.kind != "producer":
        return ins[0], None
    weight, axis, *gates = rule.out_axes[0] if rule.out_axes else (None, 0)
    shape = held.get(weight) if weight else None
    if config.get("return_sequences") is False and rank is not None:
        rank -= 1  # a recurrent layer's last step only
    if shape is None or not -len(shape) <= axis < len(shape):
        return _Out(rank, None), None
    return _Out(rank, shape[axis] // (gates[0] if gates else 1)), None


def _weights(layer: dict, weights: Weights) -> dict[str, tuple[int, ...]]:
    inner = layer.get("config")
    name = inner.get("name") if isinstance(inner, dict) else None
    return (weights(name) if isinstance(name, str) else None) or {}


def _merge(layer: dict, ins: list[_Out]) -> tuple[_Out, str | None]:
    """Elementwise inputs broadcast: their last axes agree, or are 1."""
    sizes = sorted({i.last for i in ins if i.last is not None and i.last != 1})
    if len(sizes) > 1:
        return _UNKNOWN, f"{_label(layer)}: its inputs' last axes have sizes {', '.join(map(str, sizes))}"
    ranks = [i.rank for i in ins]
    rank = max(ranks) if None not in ranks else None  # type: ignore[type-var]
    if sizes:
        return _Out(rank, sizes[0]), None
    return _Out(rank, 1 if all(i.last == 1 for i in ins) else None), None
