"""Which saved weights are prunable, and how many of each are zero.

Model files are read without policy (:mod:`prunectl.core.io`); this module adds
it: an entry is prunable when the layer table lists the weight for the layer's
class and its values are floating point. It also counts zeros, in a saved file
(slab by slab, as the file is read) or in arrays as they are written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from prunectl.core.io.modelfile import ModelFile, WeightEntry, has_layer_list
from prunectl.core.layers import get_spec, is_nested_model, prunable_weight
from prunectl.core.layers.builtin import no_inputs
from prunectl.core.weights import masks


def is_prunable(class_name: str, weight: str, dtype) -> bool:
    """Whether weight steps prune ``weight`` of a ``class_name`` layer holding values of ``dtype``."""
    return prunable_weight(class_name, weight) is not None and np.dtype(dtype).kind == "f"


def tag_prunable(entries: Iterable[WeightEntry]) -> list[WeightEntry]:
    """The entries with ``prunable`` set by the layer table."""
    return [replace(e, prunable=is_prunable(e.class_name, e.weight, e.dtype)) for e in entries]


def unclassified(model: ModelFile) -> list[str]:
    """The layers holding weights whose class the file cannot say, so only the keras engine can prune them.

    A sub-layer's weights sit in the file by folder or name path alone: where the
    owner's class has no spec (a user's custom block) or its ``sublayers`` map does
    not name the folder, the sub-layer's class is unknown. A ``.h5`` file of a model
    whose config lists no layers (a subclassed Functional) names no layer's class at all.

    Args:
        model: an open model file.

    Returns:
        The owning layers' names, in model order (empty when the file classifies every weight).
    """
    if (
        model.format == "h5"
        and not has_layer_list(model.config)
        and not is_nested_model(str(model.config.get("class_name")))
    ):
        return list(dict.fromkeys(e.layer for e in model.entries))
    opaque = []
    for entry in model.entries:
        spec = get_spec(entry.class_name)
        if entry.sublayer and (spec is None or spec.sublayers):
            opaque.append(entry.layer)
    return list(dict.fromkeys(opaque))


@dataclass
class WeightCounts:
    """A model's weights (tagged), with the number of zeros in each, by entry key."""

    entries: list[WeightEntry]
    zeros: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, model: ModelFile) -> WeightCounts:
        """Empty counts for the weights of ``model`` (filled by :meth:`counting` as they are written)."""
        return cls(tag_prunable(model.entries))

    def counting_file(self, model: ModelFile) -> Callable[[WeightEntry, np.ndarray], np.ndarray]:
        """Take ``model``'s weights as the entries, and return :meth:`counting` for writing them."""
        self.entries = tag_prunable(model.entries)
        return self.counting()

    def counting(self, transform: Callable[[WeightEntry, np.ndarray], np.ndarray] | None = None):
        """A writer transform that applies ``transform`` (if any) and counts the zeros of what is written."""

        def count(entry: WeightEntry, array: np.ndarray) -> np.ndarray:
            if transform is not None:
                array = transform(entry, array)
            self.zeros[entry.key] = masks.count_zeros(array)
            return array

        return count


def file_counts(model: ModelFile, slab_bytes: int = 4 << 20) -> WeightCounts:
    """Count the exact zeros of every weight of an open model file, reading it slab by slab.

    Counting each slab while it is still in the CPU cache makes a pass over a
    model cost about what reading it costs (see ``ModelFile.slabs``).

    Raises:
        ModelFileError: when the data cannot be read.
    """
    counts = WeightCounts(tag_prunable(model.entries))
    scratch: dict[np.dtype, np.ndarray] = {}
    for entry in counts.entries:
        nonzero = 0
        for block in model.slabs(entry, slab_bytes):
            block = np.ascontiguousarray(block).reshape(-1)
            bits = masks.bits_dtype(block.dtype)
            buffer = None
            if bits is not None:
                buffer = scratch.get(bits)
                if buffer is None or buffer.size < block.size:
                    buffer = scratch[bits] = np.empty(block.size, dtype=bits)
            nonzero += masks.count_nonzero(block, buffer)
        counts.zeros[entry.key] = entry.size - nonzero
    return counts


def live_counts(keras_model) -> WeightCounts:
    """The weights of a live Keras model, tagged as :func:`keras_weight_entries` tags them, with their zeros.

    For a model whose saved file cannot classify every weight (see :func:`unclassified`),
    so that a report counts what the keras engine pruned.
    """
    pairs = keras_weight_entries(keras_model)
    counts = WeightCounts([entry for entry, _ in pairs])
    for entry, variable in pairs:
        counts.zeros[entry.key] = masks.count_zeros(np.asarray(variable.numpy()))
    return counts


# The input axes of one weight, or None with the reason they are unknown.
Axes = tuple[tuple[int, ...] | None, str | None]


def input_axes(entry: WeightEntry, config: dict | None) -> Axes:
    """The input axes of a prunable weight (where sparsity patterns group it), or None and why not.

    Args:
        entry: the weight.
        config: its layer's config, or None where unknown (a nested layer in a saved file).

    Returns:
        ``(axes, None)``, or ``(None, reason)`` where the weight has no input axis or they cannot be told.
    """
    spec = prunable_weight(entry.class_name, entry.weight)
    if spec is None:
        return None, f"the layer table names no prunable {entry.weight} for {entry.class_name}"
    axes = spec.input_axes(entry.shape, config)
    if axes is not None:
        return axes, None
    if spec.inputs is no_inputs:
        return None, "it has no input axis: it is a lookup table"
    if config is None:
        return None, (
            f"its input axes depend on its {entry.class_name} layer's config, which the saved file does not "
            "hold for a nested layer"
        )
    return None, f"its input axes cannot be told from its {entry.class_name} layer's config"


def needs_config(entry: WeightEntry) -> bool:
    """Whether a prunable weight's input axes depend on its layer's config (an EinsumDense's equation)."""
    spec = prunable_weight(entry.class_name, entry.weight)
    return spec is not None and spec.inputs is not no_inputs and spec.input_axes(entry.shape, None) is None


def file_layer_configs(model: ModelFile) -> dict[str, dict | None]:
    """Each weight's layer config as a saved file's model config holds it, by entry key (None for a nested sub-layer).

    A sub-layer's weights (inside a MultiHeadAttention or a keras_hub block) sit in the
    file under their owner; the model config holds only the owner's constructor arguments.
    """
    found: dict[str, dict] = {}

    def walk(config: dict) -> None:
        layers = config.get("layers") if isinstance(config, dict) else None
        for layer in layers if isinstance(layers, list) else []:
            inner = layer.get("config") if isinstance(layer, dict) else None
            if not isinstance(inner, dict):
                continue
            name = inner.get("name") or layer.get("name")
            if isinstance(name, str) and name not in found:
                found[name] = inner
            if is_nested_model(str(layer.get("class_name"))) or "layers" in inner:
                walk(inner)

    config = model.config.get("config", model.config) if isinstance(model.config, dict) else {}
    walk(config if isinstance(config, dict) else {})
    return {e.key: None if e.top else found.get(e.layer) for e in model.entries}


def keras_weight_entries(keras_model, configs: dict[str, dict | None] | None = None) -> list[tuple[WeightEntry, Any]]:
    """List a live Keras model's weights as tagged entries paired with their variables.

    See :func:`keras_weight_owners` for the same list with each weight's owning layer.
    """
    return [(entry, variable) for entry, variable, _ in keras_weight_owners(keras_model, configs)]


def keras_weight_owners(
    keras_model, configs: dict[str, dict | None] | None = None
) -> list[tuple[WeightEntry, Any, Any]]:
    """List a live Keras model's weights as ``(entry, variable, layer)``: tagged entries, variables, owning layers.

    The layer is the one whose call multiplies the weight (for a data-aware
    criterion, the call whose inputs are recorded).

    A layer whose class the table describes without ``sublayers`` owns all its
    weights (a Dense; an LSTM, whose cell holds them). Any other layer (a keras_hub
    block, a MultiHeadAttention, a user's custom layer) owns only its own variables,
    and each sub-layer it tracks is an entry of its own, down to the innermost, named
    by the path of layer names from the top-level layer (``block/attention/query``),
    as a ``.keras`` file is read (:mod:`prunectl.core.io.modelfile`).

    Args:
        keras_model: the live model.
        configs: when given, filled with each entry's layer config by entry key.
    """
    from prunectl.core.io.keras_io import own_variables, sublayers

    pairs: list[tuple[WeightEntry, Any, Any]] = []

    def add(layer, path: str, variables, order: int, top: str) -> None:
        class_name = layer.__class__.__name__
        config = _layer_config(layer) if configs is not None else None
        for variable in variables:
            dtype = np.dtype(variable.dtype)
            entry = WeightEntry(
                path,
                class_name,
                variable.name,
                variable.path,
                tuple(variable.shape),
                dtype.str,
                order,
                is_prunable(class_name, variable.name, dtype),
                top=top,
            )
            pairs.append((entry, variable, layer))
            if configs is not None:
                configs[entry.key] = config

    def nested(layer, path: str, order: int, top: str) -> None:
        spec = get_spec(layer.__class__.__name__)
        if spec is not None and not spec.sublayers:
            add(layer, path, layer.weights, order, top)
            return
        add(layer, path, own_variables(layer), order, top)
        for sub in sublayers(layer):
            nested(sub, f"{path}/{sub.name}", order, top or path)

    def walk(layers, order, prefix=""):
        for layer in layers:
            inner = getattr(layer, "layers", None)
            if inner and is_nested_model(layer.__class__.__name__):
                walk(inner, order, f"{prefix}{layer.name}/")
                continue
            # Names repeat across nested models (variable paths too): the nested models' names tell them apart.
            nested(layer, f"{prefix}{layer.name}", len(order), "")
            order.append(f"{prefix}{layer.name}")

    walk(keras_model.layers, [])
    return pairs


def _layer_config(layer) -> dict | None:
    try:
        return layer.get_config()
    except (NotImplementedError, TypeError, ValueError):  # a custom layer without a usable get_config
        return None
