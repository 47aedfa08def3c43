"""The one module that reads a Keras model's layer graph: which layer calls which, on which tensors.

Public Keras API first: a model's symbolic ``inputs`` and ``outputs`` (a
Sequential forwards them to the graph it builds on its first call), and
``keras.Function`` to hold the graph between them. One thing Keras 3 has no
public API for: the list of *calls* (nodes) of a graph, which a shared layer
has several of. ``op.input``/``op.output`` give only a layer's first call, made
in whatever graph that was, so the calls are read from the graph's private
``_nodes_by_depth`` (Keras' own ``Function`` runs them from it); a node's
``operation``, ``input_tensors`` and ``output_tensors`` are public properties.
``tests/test_keras_graph.py`` pins what this module assumes about them, so a
Keras upgrade that changes it fails there first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prunectl.core.errors import StructureError


@dataclass(frozen=True)
class Call:
    """One call of a layer in a model's graph.

    Attributes:
        layer: the Keras layer (an ``InputLayer`` for each model input).
        inputs: its symbolic input tensors.
        outputs: its symbolic output tensors.
    """

    layer: Any
    inputs: tuple
    outputs: tuple


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

    def call_counts(self) -> dict[str, int]:
        """How many times each layer is called in this graph, by layer name."""
        counts: dict[str, int] = {}
        for call in self.calls:
            counts[call.layer.name] = counts.get(call.layer.name, 0) + 1
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
    return LayerGraph(
        inputs, outputs, [Call(node.operation, tuple(node.input_tensors), tuple(node.output_tensors)) for node in nodes]
    )
