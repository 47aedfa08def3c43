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
``tests/test_keras_graph.py`` pins what this module assumes about them, so a
Keras upgrade that changes it fails there first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
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
    """

    layer: Any
    inputs: tuple
    outputs: tuple
    is_op: bool = False
    constants: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class LayerGraph:
    """The calls of a Sequential or Functional model, inputs first (see :func:`layer_graph`).

    Attributes:
        inputs: the model's symbolic inputs.
        outputs: the model's symbolic outputs.
        calls: every layer call, each after the calls that produce its inputs.
    """

    inputs: list
    outputs: list
    calls: list[Call]

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
    # A Functional model is its own graph; a Sequential's is rebuilt (no layer is called) from its tensors.
    graph = model if isinstance(model, keras.Function) else keras.Function(inputs, outputs)
    by_depth = graph._nodes_by_depth
    nodes = [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]
    calls = []
    for node in nodes:
        is_op = not isinstance(node.operation, keras.layers.Layer)
        constants = _constant_shapes(keras, node) if is_op else ()
        calls.append(Call(node.operation, tuple(node.input_tensors), tuple(node.output_tensors), is_op, constants))
    return LayerGraph(inputs, outputs, calls)


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
def record_inputs(layers: list) -> Iterator[dict[int, list]]:
    """Within this scope, every eager call of one of ``layers`` appends its first input to a list.

    Keras has no public hook on a sub-layer's call (a MultiHeadAttention's output
    projection), so the instance's ``call`` is wrapped for the scope and restored after.
    Run the model eagerly (``model(x)``, not ``predict``) so that the inputs are arrays.

    Args:
        layers: live Keras layers, sub-layers included.

    Yields:
        The recorded inputs, by ``id(layer)``; the caller may clear the lists between batches.
    """
    seen: dict[int, list] = {id(layer): [] for layer in layers}
    wrapped = []
    for layer in layers:
        if id(layer) in {id(w) for w, _ in wrapped}:
            continue
        object.__setattr__(layer, "call", _recording(layer.call, seen[id(layer)]))
        wrapped.append((layer, None))
    try:
        yield seen
    finally:
        for layer, _ in wrapped:
            # The wrapper is an instance attribute over the class's method: removing it restores the method.
            object.__delattr__(layer, "call")


def _recording(call, seen: list):
    def recording_call(inputs, *args, **kwargs):
        seen.append(np.asarray(inputs))
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
