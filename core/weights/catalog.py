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

from prunectl.core.io.modelfile import ModelFile, WeightEntry
from prunectl.core.layers import is_nested_model, prunable_weight
from prunectl.core.weights import masks


def is_prunable(class_name: str, weight: str, dtype) -> bool:
    """Whether weight steps prune ``weight`` of a ``class_name`` layer holding values of ``dtype``."""
    return prunable_weight(class_name, weight) is not None and np.dtype(dtype).kind == "f"


def tag_prunable(entries: Iterable[WeightEntry]) -> list[WeightEntry]:
    """The entries with ``prunable`` set by the layer table."""
    return [replace(e, prunable=is_prunable(e.class_name, e.weight, e.dtype)) for e in entries]


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


def keras_weight_entries(keras_model) -> list[tuple[WeightEntry, Any]]:
    """List a live Keras model's weights as tagged entries paired with their variables."""
    pairs = []

    def walk(layers, order, prefix=""):
        for layer in layers:
            inner = getattr(layer, "layers", None)
            if inner and is_nested_model(layer.__class__.__name__):
                # Names repeat across nested models (variable paths too): the nested models' names tell them apart.
                walk(inner, order, f"{prefix}{layer.name}/")
                continue
            class_name = layer.__class__.__name__
            for variable in layer.weights:
                dtype = np.dtype(variable.dtype)
                entry = WeightEntry(
                    f"{prefix}{layer.name}",
                    class_name,
                    variable.name,
                    f"{prefix}{variable.path}",
                    tuple(variable.shape),
                    dtype.str,
                    len(order),
                    is_prunable(class_name, variable.name, dtype),
                )
                pairs.append((entry, variable))
            order.append(f"{prefix}{layer.name}")

    walk(keras_model.layers, [])
    return pairs
