"""The one module that reads a Keras model's layer graph: which layer calls which, on which tensors.

Public Keras API first: a model's symbolic ``inputs`` and ``outputs`` (a
Sequential forwards them to the graph it builds on its first call), and
``keras.Function`` to hold the graph between them. One thing Keras 3 has no
public API for: the list of *calls* (nodes) of a graph, which a shared layer
has several of. ``op.input``/``op.output`` give only a layer's first call, made
in whatever graph that was, so the calls are read from the graph's private
``_nodes_by_depth`` (Keras' own ``Function`` runs them from it); a node's
``operation``, ``input_tensors`` and ``output_tensors`` are public properties.
A call's non-tensor arguments (the ``1.0`` of ``x + 1.0``) are read from the
node's ``arguments`` (``args``/``kwargs``). Rebuilding a model that holds
Lambda-layer code needs Keras' safe mode lifted for the rebuild only; Keras'
public switch (``keras.config.enable_unsafe_deserialization``) is global, so
:func:`deserialization_scope` uses the scope Keras' own loader uses.
A nested model's call is replaced by its own calls (:func:`layer_graph`), its
inner inputs and outputs by the outer call's tensors, so a tensor inside it is
not reachable from the outer model's inputs by a ``keras.Model``:
:func:`evaluate` runs the calls itself to read one.
``tests/test_keras_graph.py`` pins what this module assumes about them, so a
Keras upgrade that changes it fails there first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prunectl.core.errors import StructureError


@dataclass(frozen=True)
class Call:
    """One call of a layer in a model's graph.

    Attributes:
        layer: the Keras layer (an ``InputLayer`` for each model input), or the
            operation (``keras.ops``: ``x + 1.0``, ``keras.ops.relu(x)``) a
            Functional model records as a node of its graph.
        inputs: its symbolic input tensors.
        outputs: its symbolic output tensors.
        is_op: ``layer`` is an operation, not a Layer (it has no weights and no layer rule).
        constants: the shapes of its numeric non-tensor arguments (``()`` for a scalar).
        path: the layer's name, preceded by the names of the nested models it sits in
            (``encoder/dense``): names repeat across nested models, paths do not.
        node: the Keras node of the call (its arguments, to run it: see :func:`evaluate`).
        tensors: the node's own ``(inputs, outputs)`` where a nested model's call put the outer
            call's tensors in their place in ``inputs``/``outputs``; None where they are the same.
    """

    layer: Any
    inputs: tuple
    outputs: tuple
    is_op: bool = False
    constants: tuple[tuple[int, ...], ...] = ()
    path: str = ""
    node: Any = field(default=None, repr=False, compare=False)
    tensors: tuple | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class LayerGraph:
    """The calls of a Sequential or Functional model, inputs first (see :func:`layer_graph`).

    Attributes:
        inputs: the model's symbolic inputs.
        outputs: the model's symbolic outputs.
        calls: every layer call, each after the calls that produce its inputs.
        nested: ``(path, model, input tensors)`` of each call of a nested model traced through.
    """

    inputs: list
    outputs: list
    calls: list[Call]
    nested: list[tuple[str, Any, tuple]] = field(default_factory=list)

    def call_counts(self) -> dict[int, int]:
        """How many times each layer is called in this graph, by ``id(layer)``.

        By identity, not name: a layer and an operation of the graph may share a name.
        """
        counts: dict[int, int] = {}
        for call in self.calls:
            counts[id(call.layer)] = counts.get(id(call.layer), 0) + 1
        return counts

    def sources(self) -> dict[int, Any]:
        """The layer producing each tensor of the graph, by ``id(tensor)``."""
        return {id(tensor): call.layer for call in self.calls for tensor in call.outputs}


def layer_graph(model) -> LayerGraph:
    """The layer calls of ``model``'s graph, inputs first.

    A Functional or Sequential model called as a layer is traced through: its
    calls take its place, their paths prefixed by its name, its inputs and
    outputs replaced by the tensors of the outer call. A nested model called
    twice gives its layers' calls twice (they are then shared layers).

    Args:
        model: a built Sequential or Functional Keras model.

    Returns:
        The :class:`LayerGraph`.

    Raises:
        StructureError: the model has no layer graph (a subclassed or unbuilt model).
    """
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, TypeError):
        inputs, outputs = [], []
    if not inputs or not outputs:
        raise StructureError(
            "structural pruning needs a Sequential or Functional model. "
            f"Received: {model.__class__.__name__} {model.name!r}"
        )
    from prunectl.core.io.keras_io import import_keras

    keras = import_keras()
    graph = LayerGraph(inputs, outputs, [])
    _add_calls(keras, _nodes(keras, model), "", {}, graph)
    return graph


def is_graph_model(layer) -> bool:
    """Whether ``layer`` is a Functional or Sequential model (one :func:`layer_graph` traces through)."""
    from prunectl.core.io.keras_io import import_keras

    keras = import_keras()
    if not isinstance(layer, keras.Sequential) and not (
        isinstance(layer, keras.Model) and isinstance(layer, keras.Function)
    ):
        return False
    try:
        return bool(layer.inputs) and bool(layer.outputs)
    except (AttributeError, TypeError, ValueError):  # an unbuilt Sequential
        return False


def _nodes(keras, model) -> list:
    # A Functional model is its own graph; a Sequential's is rebuilt (no layer is called) from its tensors.
    graph = model if isinstance(model, keras.Function) else keras.Function(list(model.inputs), list(model.outputs))
    by_depth = graph._nodes_by_depth
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def _add_calls(keras, nodes: list, prefix: str, alias: dict, graph: LayerGraph) -> None:
    for node in nodes:
        operation = node.operation
        own = (tuple(node.input_tensors), tuple(node.output_tensors))
        ins, outs = (tuple(alias.get(id(t), t) for t in tensors) for tensors in own)
        if prefix and isinstance(operation, keras.layers.InputLayer):
            continue  # a nested model's input: the outer call's tensor stands in for it
        if _traceable(operation, ins, outs):
            inner = {id(a): b for a, b in zip(operation.inputs, ins)}
            inner.update({id(a): b for a, b in zip(operation.outputs, outs)})
            graph.nested.append((f"{prefix}{operation.name}", operation, ins))
            _add_calls(keras, _nodes(keras, operation), f"{prefix}{operation.name}/", inner, graph)
            continue
        is_op = not isinstance(operation, keras.layers.Layer)
        constants = _constant_shapes(keras, node) if is_op else ()
        path = f"{prefix}{operation.name}"
        graph.calls.append(
            Call(operation, ins, outs, is_op, constants, path, node, own if own != (ins, outs) else None)
        )


def _traceable(operation, ins: tuple, outs: tuple) -> bool:
    """A nested model whose inputs and outputs match the outer call's tensors one to one."""
    if not is_graph_model(operation):
        return False
    inner_in, inner_out = list(operation.inputs), list(operation.outputs)
    # An output that is an input (or an output twice) has no call of its own to stand in for it.
    if {id(t) for t in inner_out} & {id(t) for t in inner_in} or len({id(t) for t in inner_out}) != len(inner_out):
        return False
    return len(inner_in) == len(ins) and len(inner_out) == len(outs)


def probe(graph: LayerGraph, tensors: list) -> Callable[[Any], list]:
    """A function from model inputs to the values of ``tensors`` of ``graph``.

    A compiled ``keras.Model`` probe where every tensor is reachable from the model's
    inputs; :func:`evaluate` where some lie inside a nested model.

    Args:
        graph: the model's :class:`LayerGraph`.
        tensors: symbolic tensors of ``graph``'s calls.

    Returns:
        The function; it returns one array per tensor.
    """
    if any(call.tensors is not None for call in graph.calls):
        return lambda x: evaluate(graph, x, tensors)
    from prunectl.core.io.keras_io import import_keras

    model = import_keras().Model(graph.inputs, tensors)

    def run(x) -> list:
        outputs = model.predict_on_batch(x)
        return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]

    return run


def evaluate(graph: LayerGraph, x, tensors: list) -> list:
    """The values of ``tensors`` of ``graph`` (nested models' inner tensors included) on inputs ``x``.

    Runs the graph's calls one by one, as Keras' own ``Function`` does, so that a
    tensor inside a nested model can be read where a ``keras.Model`` probe cannot reach it.

    Args:
        graph: the model's :class:`LayerGraph`.
        x: one array per model input (or one array for a single input).
        tensors: symbolic tensors of ``graph``'s calls.

    Returns:
        One array per tensor (of the last call that produced it, for a nested model called twice).
    """
    from prunectl.core.io.keras_io import import_keras

    flatten = import_keras().tree.flatten
    values = {id(t): v for t, v in zip(graph.inputs, x if isinstance(x, (list, tuple)) else [x])}
    wanted = {id(t) for t in tensors}
    found: dict[int, Any] = {i: values[i] for i in wanted if i in values}
    for call in graph.calls:
        if call.node is None or call.node.is_input or any(id(t) not in values for t in call.inputs):
            continue
        own_in = call.tensors[0] if call.tensors else call.inputs
        local = {id(a): values[id(b)] for a, b in zip(own_in, call.inputs)}
        args, kwargs = call.node.arguments.fill_in(local)
        for tensor, value in zip(call.outputs, flatten(call.layer(*args, **kwargs))):
            values[id(tensor)] = value
            if id(tensor) in wanted:
                found[id(tensor)] = value
    return [np.asarray(found[id(t)]) for t in tensors]


def _constant_shapes(keras, node) -> tuple[tuple[int, ...], ...]:
    arguments = getattr(node, "arguments", None)
    if arguments is None:
        return ()
    shapes = []
    for value in keras.tree.flatten((arguments.args, arguments.kwargs)):
        if isinstance(value, keras.KerasTensor) or value is None or isinstance(value, (str, bool)):
            continue
        shape = getattr(value, "shape", None)
        if shape is None:
            try:
                shape = np.shape(value)
            except Exception:  # not array-like (a dtype, a callable): not a numeric constant
                continue
        shapes.append(tuple(int(d) if d is not None else -1 for d in shape))
    return tuple(shapes)


@contextlib.contextmanager
def record_inputs(layers: list, order: list | None = None) -> Iterator[dict[int, list]]:
    """Within this scope, every eager call of one of ``layers`` appends its first input to a list.

    Keras has no public hook on a sub-layer's call (a MultiHeadAttention's output
    projection), so the instance's ``call`` is wrapped for the scope and restored after.
    Run the model eagerly (``model(x)``, not ``predict``) so that the inputs are arrays.

    Args:
        layers: live Keras layers, sub-layers included.
        order: where given, ``id(layer)`` is appended to it at each call, so that the
            caller learns the order the layers run in (their calls, not their creation).

    Yields:
        The recorded inputs, by ``id(layer)``; the caller may clear the lists between batches.
    """
    seen: dict[int, list] = {id(layer): [] for layer in layers}
    wrapped: dict[int, Any] = {}
    for layer in layers:
        if id(layer) not in wrapped:
            object.__setattr__(layer, "call", _recording(layer.call, seen[id(layer)], order, id(layer)))
            wrapped[id(layer)] = layer
    try:
        yield seen
    finally:
        for layer in wrapped.values():
            # The wrapper is an instance attribute over the class's method: removing it restores the method.
            object.__delattr__(layer, "call")


def _recording(call, seen: list, order: list | None = None, key: int = 0):
    def recording_call(inputs, *args, **kwargs):
        seen.append(np.asarray(inputs))
        if order is not None:
            order.append(key)
        return call(inputs, *args, **kwargs)

    return recording_call


@contextlib.contextmanager
def deserialization_scope(unsafe: bool) -> Iterator[None]:
    """Within this scope, rebuilding a layer from its config may (``unsafe=True``) run stored Lambda code.

    Args:
        unsafe: lift Keras' safe mode for the scope; with False, the scope changes nothing.

    Example:
        >>> with deserialization_scope(unsafe=True):
        ...     clone = keras.models.clone_model(model)
    """
    if not unsafe:
        yield
        return
    from keras.src.saving.serialization_lib import SafeModeScope

    with SafeModeScope(safe_mode=False):
        yield
