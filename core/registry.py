"""Which weights of which Keras layer classes are prunable: a data table.

A ``.keras`` weights file stores each layer's variables by position
(``layers/<group>/vars/0``), a legacy ``.h5`` file by name (``.../kernel``), and
a live Keras layer by ``variable.name``. Each entry therefore names the weight,
its position in the layer's variable list, and the sub-layer that owns it (the
``cell`` of a recurrent layer). Kernels are created before biases in every
layer's ``build()``, so their positions do not depend on ``use_bias``.

Biases and normalization parameters are deliberately absent: pruning them saves
almost nothing and costs accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightSpec:
    """One prunable weight of a layer class.

    Attributes:
        name: the Keras variable name, e.g. ``"kernel"``.
        index: its position in the owning (sub-)layer's variable list.
        sublayer: path of the owning sub-layer below the layer, e.g. ``"cell"``.
    """

    name: str
    index: int
    sublayer: str = ""


_KERNEL = (WeightSpec("kernel", 0),)
_RNN = (WeightSpec("kernel", 0, "cell"), WeightSpec("recurrent_kernel", 1, "cell"))
_SEPARABLE = (WeightSpec("depthwise_kernel", 0), WeightSpec("pointwise_kernel", 1))

PRUNABLE_WEIGHTS: dict[str, tuple[WeightSpec, ...]] = {
    "Dense": _KERNEL,
    "EinsumDense": _KERNEL,
    "Conv1D": _KERNEL,
    "Conv2D": _KERNEL,
    "Conv3D": _KERNEL,
    "Conv1DTranspose": _KERNEL,
    "Conv2DTranspose": _KERNEL,
    "Conv3DTranspose": _KERNEL,
    "DepthwiseConv1D": _KERNEL,
    "DepthwiseConv2D": _KERNEL,
    "SeparableConv1D": _SEPARABLE,
    "SeparableConv2D": _SEPARABLE,
    "Embedding": (WeightSpec("embeddings", 0),),
    "SimpleRNN": _RNN,
    "GRU": _RNN,
    "LSTM": _RNN,
}


def prunable_spec_by_name(class_name: str, weight_name: str) -> WeightSpec | None:
    """Return the spec of ``weight_name`` in ``class_name`` if it is prunable."""
    for spec in PRUNABLE_WEIGHTS.get(class_name, ()):
        if spec.name == weight_name:
            return spec
    return None


def variable_name(class_name: str, sublayer: str, index: int) -> str | None:
    """The name of variable ``index`` of ``sublayer`` in ``class_name``, where the table knows it."""
    for spec in PRUNABLE_WEIGHTS.get(class_name, ()):
        if spec.sublayer == sublayer and spec.index == index:
            return spec.name
    return None


class Registry:
    """A small name -> class registry for extension points (criteria, schedules, readers).

    The CLI builds its ``click.Choice`` lists from ``names()``, so a name is never
    typed twice.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, type] = {}

    def register(self, name: str):
        """Class decorator registering ``cls`` under ``name``."""

        def decorate(cls):
            self._items[name] = cls
            cls.registered_name = name
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> type:
        from prunectl.core.errors import OptionError

        try:
            return self._items[name]
        except KeyError:
            raise OptionError(
                f"unknown {self.kind} (known: {', '.join(self.names())}). Received: {name!r}"
            ) from None
