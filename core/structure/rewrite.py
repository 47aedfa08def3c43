"""A structural plan written straight into a saved model's config and weights, no Keras rebuild.

:func:`~prunectl.core.structure.plan.apply_plan` rebuilds the pruned model in
Keras (every layer constructed, built and given new variables), which on
DenseNet121 costs about as much as loading the model; saving it then costs a
Keras save and a re-read. When nothing after the plan needs the pruned model
live, the output is instead the input file edited: each layer's config updated
as ``apply_plan`` updates it, every tensor shape the config records (the layers'
``build_config`` and the tensors of their ``inbound_nodes``) recomputed with the
layers' own ``compute_output_shape``, and each weight sliced as ``apply_plan``
slices it. The result is the model ``apply_plan`` and a Keras save would write.

Only plain Functional models whose every layer the plan understands, called
with single-output nodes and weights stored at ``/layers/<name>/vars/<i>``, and
plans that only remove units (no bias folding) are written this way;
:func:`rewrite_plan` returns None for anything else, and the caller rebuilds.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, replace

import numpy as np

from prunectl.core.io.modelfile import WeightEntry
from prunectl.core.structure.inner import slices_by_position
from prunectl.core.structure.plan import StructuralPlan, _take

_DATASET = re.compile(r"^/layers/[^/]+/vars/(\d+)$")
_SHAPE_KEYS = ("target_shape", "use_bias")


@dataclass(frozen=True)
class PlanRewrite:
    """The pruned model as edits of the saved one.

    Attributes:
        config: the saved model config (``config.json``) of the pruned model.
        slices: per weight ``(layer name, position in its weights)``, the ``(axis, block, kept)`` slices to apply.
    """

    config: dict
    slices: dict[tuple[str, int] | None, tuple]

    def entries(self, entries: list[WeightEntry]) -> list[WeightEntry]:
        """``entries`` of the saved model with the pruned shapes."""
        out = []
        for entry in entries:
            shape = list(entry.shape)
            for axis, block, kept in self.slices.get(_position(entry), ()):
                shape[axis] = len(kept) * block
            out.append(replace(entry, shape=tuple(shape)))
        return out

    def weight(self, entry: WeightEntry, array: np.ndarray) -> np.ndarray:
        """The pruned value of the saved weight ``entry``."""
        for axis, block, kept in self.slices.get(_position(entry), ()):
            array = _take(array, axis, block, kept)
        return array


def _position(entry: WeightEntry) -> tuple[str, int] | None:
    """``(layer name, index in the layer's weights)`` of a weight a Keras save stored as ``.../<layer>/vars/<i>``.

    The folder is Keras' own attribute name for the layer (``conv2d_3``), not its
    name; the ``vars`` group's ``name`` attribute, read into ``entry.layer``, is.
    """
    match = _DATASET.match(entry.dataset)
    return (entry.layer, int(match[1])) if match else None


def _is_tensor(value) -> bool:
    return isinstance(value, dict) and value.get("class_name") == "__keras_tensor__"


def _tensors(value) -> list[dict]:
    if _is_tensor(value):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _shapes_of(value):
    """The shape structure of a node's first argument: one shape, or a list of them."""
    if _is_tensor(value):
        return tuple(value["config"]["shape"])
    return [_shapes_of(v) for v in value]


def _as_lists(shapes):
    return [_as_lists(s) for s in shapes] if isinstance(shapes, list) else list(shapes)


def rewrite_plan(config: dict, model, plan: StructuralPlan) -> PlanRewrite | None:
    """The saved config and weight slices of ``model`` pruned by ``plan``, or None where only a rebuild can say.

    Args:
        config: the saved model's parsed ``config.json``.
        model: the loaded Keras model ``plan`` was made for (its layers compute the new shapes).
        plan: the structural plan.

    Returns:
        The :class:`PlanRewrite`, or None for a model or plan this cannot write
        (call :func:`~prunectl.core.structure.plan.apply_plan` then).
    """
    if config.get("class_name") != "Functional" or plan.boundaries:
        return None
    if any(e.bias_delta is not None or any(k in e.config for k in _SHAPE_KEYS) for e in plan.edits.values()):
        return None
    # A sub-layer's weights (attention heads) sit below ``/layers/<name>/<sub-layer>/``: rebuilt instead.
    if any("/" in path for e in plan.edits.values() for path, *_ in e.slices):
        return None
    layers = {layer.name: layer for layer in model.layers}
    config = copy.deepcopy(config)
    shapes: dict[tuple, tuple] = {}
    try:
        for entry in config["config"]["layers"]:
            name = entry["name"]
            if entry["class_name"] == "InputLayer":
                shapes[(name, 0, 0)] = tuple(entry["config"]["batch_shape"])
                continue
            layer = layers[name]
            if hasattr(layer, "layers"):  # a nested model: its own config would need the same rewrite
                return None
            edit = plan.edits.get(name)
            units = next(iter(edit.config.values())) if edit is not None and edit.config else None
            if edit is not None:
                entry["config"].update(edit.config)
            for index, node in enumerate(entry["inbound_nodes"]):
                for tensor in _tensors(node):
                    tensor["config"]["shape"] = list(shapes[tuple(tensor["config"]["keras_history"])])
                in_shapes = _shapes_of(node["args"][0])
                out = layer.compute_output_shape(in_shapes)
                if not (isinstance(out, tuple) and all(d is None or isinstance(d, int) for d in out)):
                    return None  # several outputs
                shapes[(name, index, 0)] = out if units is None else (*out[:-1], units)
                if index == 0 and "build_config" in entry:
                    entry["build_config"]["input_shape"] = _as_lists(in_shapes)
        # The outputs are never pruned: a different output shape means a shape above was computed wrongly.
        outputs = config["config"]["output_layers"]
        outputs = [outputs] if isinstance(outputs[0], str) else outputs  # one output is saved unnested
        if len(outputs) != len(model.outputs):
            return None
        for (name, index, tensor_index), tensor in zip(outputs, model.outputs):
            if shapes[(name, index, tensor_index)] != tuple(tensor.shape):
                return None
    except (KeyError, TypeError, ValueError, IndexError, NotImplementedError):
        return None
    slices: dict[tuple[str, int] | None, tuple] = {}
    for name, edit in plan.edits.items():
        # Matched as apply_plan matches them (unnamed variables are ``variable``, ``variable_1``, ...).
        for index, found in enumerate(slices_by_position(layers[name], edit.slices)):
            if found:
                slices[(name, index)] = tuple(found)
    return PlanRewrite(config, slices)


def stored_as_expected(entries: list[WeightEntry], model) -> bool:
    """Whether every weight of the saved model is the ``i``-th weight of a top-level layer of ``model``, same shape.

    That is where a Keras save puts them (``/layers/<attribute>/vars/<i>``), and
    what :class:`PlanRewrite` relies on to find each weight's slices.
    """
    layers = {layer.name: layer for layer in model.layers}
    for entry in entries:
        at = _position(entry)
        if at is None or at[0] not in layers or at[1] >= len(layers[at[0]].weights):
            return False
        if tuple(layers[at[0]].weights[at[1]].shape) != tuple(entry.shape):
            return False
    return len(entries) == sum(len(layer.weights) for layer in model.layers)
