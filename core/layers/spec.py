"""What prunectl knows about a Keras layer class: one :class:`LayerSpec` per class, in one table.

A spec says which of the layer's weights weight pruning may zero (and where a
``.keras`` file stores them), how the layer moves channels for structural
pruning, which weights count towards multiply-adds, whether a BatchNormalization
after it folds into it, and whether it is a model holding other layers.

The table is keyed by class name, because a saved model names its layers' classes
by name and is read without importing them. Operations a Functional model records
as graph nodes (``x + 1.0``, ``keras.ops.relu(x)``) have their own entries, keyed
``"ops.<ClassName>"`` (see :func:`op_key`), so the op ``keras.ops.add`` never takes
the rule of the layer ``keras.layers.Add``; users register op rules the same way. The built-in Keras layers are in
:mod:`prunectl.core.layers.builtin`; a user registers their own class with
:func:`register_layer` (or the :func:`layer_spec` class decorator), and an
installed package can ship specs under the ``prunectl.layers`` entry-point group,
which is read once, on the first lookup.

This module imports nothing heavy: the CLI reads the table at ``--help`` time.

Example:
    >>> from prunectl.core.layers import LayerSpec, WeightSpec, register_layer
    >>> register_layer("ScaledDense", LayerSpec(prunable=(WeightSpec("kernel", 0),),
    ...                                          mac_weights={"kernel": "output"}))
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from prunectl.core.errors import OptionError, SetupError

ENTRY_POINT_GROUP = "prunectl.layers"


@dataclass(frozen=True)
class WeightSpec:
    """One prunable weight of a layer class.

    A ``.keras`` weights file stores each layer's variables by position
    (``layers/<group>/vars/0``), a legacy ``.h5`` file by name (``.../kernel``), and
    a live Keras layer by ``variable.name``; a spec therefore names all three.

    Attributes:
        name: the Keras variable name, e.g. ``"kernel"``.
        index: its position in the owning (sub-)layer's variable list.
        sublayer: path of the owning sub-layer below the layer, e.g. ``"cell"``.
        inputs: ``inputs(shape, config)`` gives the weight's *input axes*, those its layer sums
            over (the reduction of its matrix product), where sparsity patterns group weights;
            ``config`` is the owning layer's config, or None where it is unknown (a sub-layer in a
            saved file). It returns None where it cannot tell or the weight multiplies nothing (an
            embedding table). None (the default): every axis but the last, as for a Dense or
            Conv kernel.
    """

    name: str
    index: int
    sublayer: str = ""
    inputs: Callable[[tuple[int, ...], dict | None], tuple[int, ...] | None] | None = None

    def input_axes(self, shape: tuple[int, ...], config: dict | None = None) -> tuple[int, ...] | None:
        """The axes of a weight of ``shape`` that its layer sums over, or None where unknown.

        Example:
            >>> WeightSpec("kernel", 0).input_axes((3, 3, 16, 32))
            (0, 1, 2)
        """
        if self.inputs is not None:
            return self.inputs(tuple(shape), config)
        return tuple(range(len(shape) - 1)) if len(shape) >= 2 else None


@dataclass(frozen=True)
class WeightShape:
    """One weight a layer's config implies, for checking a saved file's weights against its config.

    A layer's ``weight_shapes`` list every weight it creates, in creation order
    (a ``.keras`` file stores them by that position, per sub-layer).

    Attributes:
        name: the Keras variable name, e.g. ``"kernel"``.
        dims: ``(axis, size)`` pairs, ``size`` saying what the config fixes that axis to:
            a product of config keys, items ``key[i]`` and integers (``"units*4"``,
            ``"kernel_size[0]"``), or ``"@label"``, the same size in every weight of
            the layer naming ``@label``.
        when: config key whose truth says whether the layer has the weight (``"use_bias"``).
        sublayer: path of the owning sub-layer below the layer, e.g. ``"cell"``.
    """

    name: str
    dims: tuple[tuple[int, str], ...] = ()
    when: str | None = None
    sublayer: str = ""


@dataclass(frozen=True)
class Rule:
    """How one layer class moves channels (the last axis of its tensors).

    Attributes:
        kind: ``producer`` (new units), ``passthrough`` (keeps its input's channels),
            ``normalize`` (keeps its input's channels but takes statistics over them, so
            removing a channel changes the others: pruned jointly with a note, or a boundary),
            ``flatten``, ``reshape``, ``merge`` (elementwise over inputs) or ``concat``.
        units: config key of a producer's unit count.
        in_axes: ``(weight, axis, block_key)`` sliced by the kept input channels;
            ``block_key`` names a config value of consecutive entries per channel.
        out_axes: ``(weight, axis)`` sliced by a producer's kept units, or ``(weight, axis, gates)``
            where that axis holds ``gates`` runs of the units one after another (a recurrent
            layer's ``[i|f|c|o]`` columns): keeping unit ``u`` keeps ``g * units + u`` in every run.
        fold: how a removed input's mean reaches the bias (``dense``, ``conv``,
            ``transpose`` or ``separable``; see ``structure.plan``).
        check: ``check(config, rank)`` returns why a config cannot be handled
            (the layer is then a boundary, left whole), or None.
        width: config key holding a pass-through's channel count, set to the kept
            channels when the layer is rebuilt (e.g. ``projection_dim``).
        axis: config key of the axis the layer works along (BatchNormalization's ``axis``):
            it must be its input's channel axis (the last one, or 1 after a ``channels_first``
            layer), else the layer is a boundary.
        residual: the rule applies only when the residual stream is pruned (``prune_residual``);
            otherwise the layer is a boundary, as an Embedding or an attention layer is by default.
            ``in_axes`` weights may then be weight paths (see :class:`Inner`).
    """

    kind: str
    units: str | None = None
    in_axes: tuple = ()
    out_axes: tuple = ()
    fold: str | None = None
    check: Callable[[dict, int], str | None] | None = None
    width: str | None = None
    axis: str | None = None
    residual: bool = False


def gated(kept, gates: int, units: int):
    """The indices along a gate-major axis of ``gates`` runs of ``units`` that keep units ``kept``.

    Example:
        >>> gated(np.array([0, 2]), 2, 3)  # [z0 z1 z2 | r0 r1 r2] keeping units 0 and 2
        array([0, 2, 3, 5])
    """
    import numpy as np

    kept = np.asarray(kept)
    return (np.arange(gates)[:, None] * units + kept[None, :]).ravel()


@dataclass(frozen=True)
class Inner:
    """Units that live inside one layer and no other layer sees: attention heads, a block's feed-forward units.

    Removing some of them changes only that layer's config (``count``) and the weights
    ``slices`` name, so they form a group of their own, never coupled to the layers
    around the layer.

    A weight *path* names a variable of the layer or of one of its sub-layers: the
    sub-layer's attribute path, then the variable name (``"kernel"``,
    ``"query_dense/kernel"``, ``"_feedforward_output_dense/kernel"``), as a ``.keras``
    file stores it (``layers/<layer>/query_dense/vars/0``) and as ``getattr`` reaches
    it on a live layer. ``*`` stands for every item of a list attribute
    (``"encoder_layers/*/mlp/dense_1/kernel"``): the items then lose the same units.

    Attributes:
        name: what the units are, shown in plans (``"heads"``, ``"ffn"``).
        count: config key of how many there are (``num_heads``, ``intermediate_dim``).
        slices: ``(weight path, axis)`` pairs sliced by the kept units.
        per_unit: config entries per removable unit (2 where the config counts a gated pair).
        observe: ``(sub-layer path, axis)``: the sub-layer whose *input* carries the units on
            ``axis``, where activation criteria measure each unit's contribution; None when they cannot.
        check: ``check(config)`` returns why the units cannot be removed (e.g. another value is
            derived from the count), or None.
    """

    name: str
    count: str
    slices: tuple[tuple[str, int], ...]
    per_unit: int = 1
    observe: tuple[str, int] | None = None
    check: Callable[[dict], str | None] | None = None


OP_PREFIX = "ops."


def op_key(class_name: str) -> str:
    """The table key of the graph operation class ``class_name`` (not a Layer), e.g. ``"ops.Add"``.

    Example:
        >>> register_layer(op_key("Erf"), LayerSpec(rule=Rule("passthrough")))
    """
    return f"{OP_PREFIX}{class_name}"


RULE_KINDS = ("producer", "passthrough", "normalize", "flatten", "reshape", "merge", "concat")
MAC_POSITIONS = ("input", "output")


@dataclass(frozen=True)
class LayerSpec:
    """Everything prunectl knows about one layer class.

    Attributes:
        prunable: the weights weight pruning zeroes (biases and normalization
            parameters are left out on purpose: pruning them saves almost nothing).
        rule: how the layer moves channels, or None: structural pruning then
            leaves it whole and freezes the channels around it.
        mac_weights: kernel-like weights by name, each mapped to where its entries
            are used once per position: ``"output"`` (a convolution's output
            positions) or ``"input"`` (a transposed convolution's).
        foldable: an inference-mode BatchNormalization right after the layer can be
            folded into it (its kernel's last axis is the output channel, and it has a bias option).
        nested_model: the layer is a model whose own layers hold the weights.
        weight_shapes: every weight the layer creates and the sizes its config fixes,
            or None when prunectl does not know them (the saved weights are then not checked against the config).
        sublayers: the class of each sub-layer holding weights, by attribute path
            (``{"query_dense": "EinsumDense"}``): how a saved file's nested weights are classified
            without loading the model.
        inner: units inside the layer that structural pruning may remove (see :class:`Inner`).
        macs: ``macs(shapes, in_shape, out_shape)``, the multiply-adds of one call from the layer's
            ``(variable name, shape)`` list in weight order, for a layer ``mac_weights`` cannot describe
            (an attention layer's score and context products); None to use ``mac_weights``.
    """

    prunable: tuple[WeightSpec, ...] = ()
    rule: Rule | None = None
    mac_weights: Mapping[str, str] = field(default_factory=dict)
    foldable: bool = False
    nested_model: bool = False
    weight_shapes: tuple[WeightShape, ...] | None = None
    sublayers: Mapping[str, str] = field(default_factory=dict)
    inner: tuple[Inner, ...] = ()
    macs: Callable[[list[tuple[str, tuple[int, ...]]], tuple, tuple], int] | None = None

    def prunable_weight(self, name: str) -> WeightSpec | None:
        """The spec of weight ``name`` if it is prunable, else None."""
        return next((w for w in self.prunable if w.name == name), None)

    def variable_name(self, sublayer: str, index: int) -> str | None:
        """The name of prunable variable ``index`` of ``sublayer``, where the spec knows it."""
        return next((w.name for w in self.prunable if w.sublayer == sublayer and w.index == index), None)


_FACTOR = r"(?:\d+|[A-Za-z_]\w*(?:\[\d+\])?)"
_DIM = re.compile(rf"@\w+|{_FACTOR}(?:\*{_FACTOR})*")

_TABLE: dict[str, LayerSpec] = {}
_entry_points_loaded = False


def _validate(name: str, spec: LayerSpec) -> None:
    if not isinstance(spec, LayerSpec):
        raise OptionError(f"a layer spec must be a LayerSpec. Received: {name}={spec!r}")
    if spec.rule is not None and spec.rule.kind not in RULE_KINDS:
        raise OptionError(f"rule kind must be one of {', '.join(RULE_KINDS)}. Received: {name} kind={spec.rule.kind!r}")
    if spec.rule is not None and spec.rule.kind == "producer" and not spec.rule.units:
        raise OptionError(f"a producer rule names the config key of its unit count. Received: {name} units=None")
    for shape in spec.weight_shapes or ():
        if not isinstance(shape, WeightShape) or not all(_DIM.fullmatch(str(size)) for _, size in shape.dims):
            raise OptionError(
                "weight_shapes are WeightShape with sizes like 'units', 'kernel_size[0]', 'units*4' or '@label'. "
                f"Received: {name} {shape!r}"
            )
    wrong = {w: at for w, at in spec.mac_weights.items() if at not in MAC_POSITIONS}
    if wrong:
        raise OptionError(f"mac_weights positions must be 'input' or 'output'. Received: {name} {wrong}")


def register_layer(layer: str | type, spec: LayerSpec) -> LayerSpec:
    """Tell prunectl about a layer class: its spec replaces any earlier one.

    Args:
        layer: the class, or its name as a saved model records it (``class_name``);
            for a graph operation (not a Layer), its :func:`op_key`.
        spec: what prunectl should know about it.

    Returns:
        ``spec``.

    Raises:
        OptionError: ``spec`` is not a valid :class:`LayerSpec`.

    Example:
        >>> register_layer("ScaledDense", LayerSpec(prunable=(WeightSpec("kernel", 0),)))
    """
    name = layer if isinstance(layer, str) else layer.__name__
    _validate(name, spec)
    # Entry points load first, so a spec registered in code wins over a package's.
    load_entry_points()
    _TABLE[name] = spec
    return spec


def layer_spec(spec: LayerSpec) -> Callable[[type], type]:
    """Class decorator registering ``spec`` for the decorated layer class (see :func:`register_layer`).

    Example:
        >>> @layer_spec(LayerSpec(prunable=(WeightSpec("kernel", 0),)))
        ... class ScaledDense(keras.layers.Layer): ...
    """

    def decorate(cls: type) -> type:
        register_layer(cls, spec)
        return cls

    return decorate


def _register_builtin(table: Mapping[str, LayerSpec]) -> None:
    for name, spec in table.items():
        _validate(name, spec)
        _TABLE[name] = spec


def get_spec(class_name: str) -> LayerSpec | None:
    """The spec of layer class ``class_name``, or None when prunectl knows nothing about it.

    A legacy ``.h5`` file names a class registered with
    ``keras.saving.register_keras_serializable`` by its registered name,
    ``"package>ClassName"``; such a name finds the spec of ``ClassName`` unless
    the table holds the full name.
    """
    load_entry_points()
    spec = _TABLE.get(class_name)
    if spec is None and ">" in class_name:
        spec = _TABLE.get(class_name.rsplit(">", 1)[-1])
    return spec


def specs() -> dict[str, LayerSpec]:
    """A copy of the whole table, by class name."""
    load_entry_points()
    return dict(_TABLE)


def prunable_weight(class_name: str, weight: str) -> WeightSpec | None:
    """The spec of ``weight`` of a ``class_name`` layer if weight pruning may zero it."""
    spec = get_spec(class_name)
    return spec.prunable_weight(weight) if spec else None


def variable_name(class_name: str, sublayer: str, index: int) -> str | None:
    """The name of variable ``index`` of ``sublayer`` in a ``class_name`` layer, where the table knows it."""
    spec = get_spec(class_name)
    return spec.variable_name(sublayer, index) if spec else None


def is_nested_model(class_name: str) -> bool:
    """Whether ``class_name`` is a model whose own layers hold the weights."""
    spec = get_spec(class_name)
    return bool(spec and spec.nested_model)


def load_entry_points() -> None:
    """Register the specs that installed packages ship under :data:`ENTRY_POINT_GROUP`, once.

    Called by the first lookup; also before Keras loads a model, because the
    module an entry point names usually defines the custom layer class too.

    An entry point loads to a mapping ``{class name: LayerSpec}``, or to a
    callable taking no arguments that registers its specs itself or returns
    such a mapping.

    Raises:
        SetupError: an entry point cannot be loaded or gives something else.
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = point.load()
            table = loaded() if callable(loaded) else loaded
        except Exception as exc:  # a broken plugin must not read as a prunectl bug
            raise SetupError(
                f"cannot load layer specs from entry point {point.name!r} ({exc}). Received: {point.value!r}"
            ) from exc
        if table is None:
            continue
        if not isinstance(table, Mapping):
            raise SetupError(
                f"a {ENTRY_POINT_GROUP} entry point must give a mapping of class names to "
                f"LayerSpec. Received: {point.name}={type(table).__name__}"
            )
        for name, spec in table.items():
            try:
                _validate(name, spec)
            except OptionError as exc:
                raise SetupError(f"entry point {point.name!r}: {exc}") from None
            _TABLE[name] = spec
