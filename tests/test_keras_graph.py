"""What prunectl assumes about Keras internals, pinned: a Keras upgrade that changes it fails here.

Only ``prunectl/core/structure/keras_graph.py`` touches Keras internals: the call
nodes of a graph (``Function._nodes_by_depth``), read through the public
``Node.operation``/``input_tensors``/``output_tensors``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from prunectl.core.errors import StructureError
from prunectl.core.structure.keras_graph import layer_graph

ROOT = Path(__file__).resolve().parent.parent
PRIVATE = re.compile(r"_nodes_by_depth|_inbound_nodes|_keras_history|_functional\b|_max_workers")


def _keras():
    import keras

    return keras


def _shared_functional():
    keras = _keras()
    inputs = keras.Input((4,), name="x")
    shared = keras.layers.Dense(4, name="shared")
    a = shared(inputs)
    b = shared(keras.layers.ReLU(name="relu")(a))
    return keras.Model(inputs, keras.layers.Add(name="add")([a, b]))


def _sequential():
    keras = _keras()
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d1"), keras.layers.Dense(1, name="d2")])


def _check_nodes(graph, model):
    """``_nodes_by_depth``: depth -> call nodes, deepest (the inputs) first, covering ``graph.operations``."""
    keras = _keras()
    by_depth = graph._nodes_by_depth
    assert all(isinstance(depth, int) for depth in by_depth)
    nodes = [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]
    assert {id(node.operation) for node in nodes} == {id(op) for op in graph.operations}
    seen = {id(t) for t in model.inputs}
    for node in nodes:
        assert isinstance(node.operation, keras.Operation)
        assert all(isinstance(t, keras.KerasTensor) for t in (*node.input_tensors, *node.output_tensors))
        # Every input was produced by an earlier node (or is a model input): the order is a topological one.
        assert all(id(t) in seen for t in node.input_tensors), node
        seen.update(id(t) for t in node.output_tensors)
    assert all(id(t) in seen for t in model.outputs)
    return nodes


def test_functional_model_is_a_function_with_its_call_nodes():
    keras = _keras()
    model = _shared_functional()
    assert isinstance(model, keras.Function)
    nodes = _check_nodes(model, model)
    assert [n.operation.name for n in nodes].count("shared") == 2
    # The public first-call accessors only see one call of a shared layer: why the nodes are read at all.
    assert model.get_layer("shared").output is nodes[1].output_tensors[0]


def test_sequential_graph_is_rebuilt_from_its_public_tensors():
    keras = _keras()
    model = _sequential()
    assert not isinstance(model, keras.Function)
    graph = keras.Function(model.inputs, model.outputs)
    nodes = _check_nodes(graph, model)
    assert [n.operation.name for n in nodes][1:] == ["d1", "d2"]
    assert nodes[0].operation.__class__.__name__ == "InputLayer"


def test_layer_graph_lists_calls_inputs_first():
    graph = layer_graph(_shared_functional())
    assert [c.layer.name for c in graph.calls] == ["x", "shared", "relu", "shared", "add"]
    counts = {call.layer.name: graph.call_counts()[id(call.layer)] for call in graph.calls}
    assert counts == {"x": 1, "shared": 2, "relu": 1, "add": 1}
    sources = graph.sources()
    assert sources[id(graph.calls[-1].inputs[1])].name == "shared"
    assert [c.layer.name for c in layer_graph(_sequential()).calls][1:] == ["d1", "d2"]


def test_layer_graph_refuses_a_model_without_a_graph():
    keras = _keras()

    class Sub(keras.Model):
        def __init__(self):
            super().__init__(name="sub")
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Sub()
    model(keras.ops.ones((1, 3)))
    with pytest.raises(StructureError, match="needs a Sequential or Functional model. Received: Sub 'sub'"):
        layer_graph(model)
    with pytest.raises(StructureError, match="Received: Sequential"):
        layer_graph(keras.Sequential([keras.layers.Dense(2)]))  # never built: no graph yet


def test_keras_internals_are_touched_in_one_module_only():
    paths = [path for folder in ("core", "cli") for path in sorted((ROOT / folder).rglob("*.py"))]
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in paths
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert found and all(f.startswith("core/structure/keras_graph.py:") for f in found), found


def test_op_calls_carry_their_constant_arguments():
    """``Node.arguments.args``/``kwargs`` hold an op call's non-tensor arguments (the ``1.0`` of ``x + 1.0``)."""
    import numpy as np

    keras = _keras()
    inputs = keras.Input((3,))
    x = keras.layers.Dense(3, name="d")(inputs)
    x = 2.0 - (x + np.ones(3, "float32"))
    graph = layer_graph(keras.Model(inputs, keras.ops.relu(x)))
    ops = [(c.layer.__class__.__name__, c.is_op, c.constants) for c in graph.calls[1:]]
    assert ops == [("Dense", False, ()), ("Add", True, ((3,),)), ("Subtract", True, ((),)), ("Relu", True, ())]
    assert all(len(c.inputs) == 1 for c in graph.calls[2:])


def test_deserialization_scope_lifts_safe_mode_only_inside():
    from prunectl.core.structure.keras_graph import deserialization_scope

    keras = _keras()
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t + 1.0)(inputs))
    with pytest.raises(ValueError, match="safe_mode"):
        keras.models.clone_model(model)
    with deserialization_scope(unsafe=True):
        assert keras.models.clone_model(model) is not None
    with pytest.raises(ValueError, match="safe_mode"):
        keras.models.clone_model(model)
