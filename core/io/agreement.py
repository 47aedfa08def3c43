"""A saved model's config and weights must agree, as Keras would require, checked without TensorFlow.

The file engine copies a model's config verbatim and rewrites only its weights,
so a file whose config names a class Keras lacks, passes a layer a key its
constructor refuses, or implies weights the file does not hold (``units=257``
over a 256-wide kernel) would be written out as a "pruned" model no one can
load. :func:`check_agreement` refuses such a file before anything is written:

1. every layer, and every nested object of a layer config (initializers,
   regularizers, dtype policies), whose class is in Keras's namespace names a
   class the installed Keras has;
2. every Keras layer's config keys, and those of every nested Keras object
   (dtype policy, initializer, regularizer, constraint), are arguments its constructor accepts;
3. the weights in the file are those the config implies: no weights for a layer
   the config lacks, and, for the classes whose ``weight_shapes`` the layer table
   knows, the same weights (``use_bias``, ``center``/``scale``) with the sizes the
   config fixes (``units``, ``filters``, ``kernel_size``, ...);
4. the graph holds together: every layer a node, ``input_layers`` or
   ``output_layers`` names is in the config, and each layer's input channels are
   those its weights read (:mod:`prunectl.core.io.config_graph`).

What Keras accepts is read from its installed source by
:mod:`prunectl.core.io.keras_api`. Classes outside Keras (custom layers,
``keras_hub``) are accepted as data: only their own package can check them.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from prunectl.core.errors import InvalidModelError
from prunectl.core.io import keras_api
from prunectl.core.io.config_graph import Weights, graph_problems, table_spec
from prunectl.core.io.modelfile import ModelFile, WeightEntry, has_layer_list
from prunectl.core.layers import WeightShape, get_spec, is_nested_model

# Keras's legacy loader turns a layer's batch_input_shape into input_shape before the constructor sees it.
_LEGACY_KEYS = frozenset({"batch_input_shape"})
# Objects in a config that are no Keras class: a tensor reference, a plain function.
_NOT_CLASSES = frozenset({"__keras_tensor__", "function"})
# Config keys a Keras layer passes to keras.activations.get, which takes a string only from its own table.
_ACTIVATION_KEYS = ("activation", "recurrent_activation")
_PLAIN_POLICIES = frozenset({"DTypePolicy", "FloatDTypePolicy"})


@dataclass(frozen=True)
class _Layer:
    name: str | None
    class_name: str
    config: dict
    module: str | None  # the Keras module its class resolves in; None outside Keras
    keras: bool  # its class is Keras's own (so Keras's rules, and the built-in table, apply)
    legacy: bool  # no module recorded: Keras's legacy loader reads it

    @property
    def label(self) -> str:
        return f"layer {self.name!r} ({self.class_name})"


def check_agreement(model: ModelFile) -> None:
    """Refuse a saved model whose config and weights Keras would not load together.

    Args:
        model: an open model file.

    Raises:
        InvalidModelError: the first disagreement found, naming the layer and what disagrees.

    Example:
        >>> with open_model_file("model.h5") as model:
        ...     check_agreement(model)
    """
    for what in disagreements(model):
        raise InvalidModelError(model.path, what)


def disagreements(model: ModelFile) -> Iterator[str]:
    """Every disagreement between ``model``'s config and its weights, or with the installed Keras, as text.

    Args:
        model: an open model file.

    Yields:
        One line per disagreement, e.g.
        ``layer 'dense_1' (Dense): config says units=257 but its kernel has shape (64, 256)``.
    """
    by_name = model.format == "h5"  # a .h5 file names each weight; a .keras file stores them by position
    layers = list(_walk(model.config))
    for layer in layers:
        yield from _class_problems(layer)
    yield from _weight_problems(layers, model.entries, by_name, _names_layers(model.config))
    yield from graph_problems(model.config, _known_weights(layers, model.entries, by_name))


def _names_layers(config: dict) -> bool:
    """Whether a model config names the layers that hold its weights: it lists them, or is Keras's own model class."""
    return has_layer_list(config) or is_nested_model(str(config.get("class_name")))


def _walk(config: dict) -> Iterator[_Layer]:
    """The model itself and every layer below it, nested models included."""
    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str):
        return
    inner = config.get("config")
    inner = inner if isinstance(inner, dict) else {}
    class_name = config["class_name"]
    module, keras = keras_api.resolve_class(config)
    name = inner.get("name", config.get("name"))
    name = name if isinstance(name, str) else None  # a crafted name (a list, a number) names nothing
    yield _Layer(name, class_name, inner, module, keras, "module" not in config)
    for layer in inner.get("layers", []) if isinstance(inner.get("layers"), list) else []:
        yield from _walk(layer)


def _class_problems(layer: _Layer) -> Iterator[str]:
    if layer.keras and keras_api.package_dir() is not None:
        if layer.module is None:
            # A plain name Keras lacks loads only as a custom object; one prunectl's table knows may be one.
            if get_spec(layer.class_name) is None:
                yield f"{layer.label}: unknown class; keras.layers has no {layer.class_name!r}"
            return
        if keras_api.has_name(layer.module, layer.class_name) is False:
            yield f"{layer.label}: unknown class; {layer.module} has no {layer.class_name!r}"
            return
        if not _holds_layers(layer.class_name, layer.config):
            accepted = keras_api.accepted_keys(layer.module, layer.class_name)
            if accepted is not None:
                unknown = sorted(set(layer.config) - accepted - (_LEGACY_KEYS if layer.legacy else frozenset()))
                if unknown:
                    yield (
                        f"{layer.label}: config key {unknown[0]!r} is not an argument of "
                        f"{layer.module}.{layer.class_name}"
                    )
        for key, value in layer.config.items():
            if _built_by_get(key) and isinstance(value, dict) and not isinstance(value.get("class_name"), str):
                # keras.{initializers,regularizers,constraints,dtype_policies,activations}.get refuse such a dict
                yield f"{layer.label}: {key} is a serialized object without a class_name"
        known = keras_api.activation_names()
        for key in _ACTIVATION_KEYS:
            value = layer.config.get(key)
            if known is not None and isinstance(value, str) and value not in known:
                yield f"{layer.label}: {key} {value!r} is not a Keras activation"
            elif key in layer.config and not isinstance(value, (str, dict, type(None))):
                # keras.activations.get takes None, a name or a serialized function; a number or list it refuses
                yield f"{layer.label}: {key} {value!r} is not a Keras activation"
    for key, value in layer.config.items():
        if key != "layers":
            yield from _object_problems(layer, key, value)


def _built_by_get(key: str) -> bool:
    """Whether a Keras layer builds config ``key``'s value with a ``keras.<kind>.get``, which needs a class_name."""
    return key == "dtype" or key in _ACTIVATION_KEYS or key.endswith(("_initializer", "_regularizer", "_constraint"))


def _holds_layers(class_name: str, config: dict) -> bool:
    """Whether a config is a model's: its keys are the model's constructor's, not read from one class's source."""
    return is_nested_model(class_name) or "layers" in config


def _object_problems(layer: _Layer, key: str, value) -> Iterator[str]:
    """Unknown Keras classes among the serialized objects in one config value."""
    if isinstance(value, list):
        for item in value:
            yield from _object_problems(layer, key, item)
        return
    if not isinstance(value, dict):
        return
    class_name, module = value.get("class_name"), value.get("module")
    if isinstance(class_name, str) and isinstance(module, str) and class_name not in _NOT_CLASSES:
        module, keras = keras_api.resolve_class(value)
        if keras and module and keras_api.has_name(module, class_name) is False:
            yield f"{layer.label}: {key} names an unknown class; {module} has no {class_name!r}"
            return
        config = value.get("config")
        if keras and module and isinstance(config, dict) and not _holds_layers(class_name, config):
            # Keras builds a nested object (a dtype policy, an initializer) with cls.from_config(config).
            accepted = keras_api.accepted_keys(module, class_name)
            unknown = sorted(set(config) - accepted) if accepted is not None else []
            if unknown:
                yield (f"{layer.label}: {key} config key {unknown[0]!r} is not an argument of {module}.{class_name}")
                return
    for item in value.values():
        yield from _object_problems(layer, key, item)


def _weight_problems(layers: list[_Layer], entries: list[WeightEntry], by_name: bool, listed: bool) -> Iterator[str]:
    named = Counter(layer.name for layer in layers)
    by_owner: dict[str, list[WeightEntry]] = defaultdict(list)
    for entry in entries:
        by_owner[entry.layer].append(entry)
    # A model whose config is its constructor's arguments (a subclassed Functional: a keras_hub backbone)
    # names no layers to hold weights: Keras checks them when it builds the model.
    tops = Counter(entry.top or entry.layer for entry in entries) if listed else Counter()
    for owner, count in tops.items():
        if isinstance(owner, str) and owner not in named:
            yield (
                f"the file holds {count} weight{'s' if count != 1 else ''} for layer {owner!r}, "
                "which the config does not have"
            )
    for layer in layers:
        known = _weight_shapes(layer)
        if known is None or named[layer.name] != 1:
            continue
        yield from _layer_weight_problems(layer, *known, by_owner.get(layer.name or "", []), by_name)


def _weight_shapes(layer: _Layer) -> tuple[tuple[WeightShape, ...], tuple[str, ...]] | None:
    """The weights ``layer`` must hold and the config keys that switched them on or off.

    None where the table does not know them or something in the config changes them.
    """
    spec = table_spec(layer.class_name, layer.keras)
    if spec is None or spec.weight_shapes is None:
        return None
    config = layer.config
    dtype = config.get("dtype")
    policy = dtype.get("class_name") if isinstance(dtype, dict) else None
    if config.get("lora_rank") or config.get("quantization_config") or (policy and str(policy) not in _PLAIN_POLICIES):
        return None  # LoRA and quantized layers hold other weights
    if isinstance(dtype, str) and not re.fullmatch(r"(mixed_)?(b?float\d+|float\d+_from_\w+)", dtype):
        return None
    if any(shape.when is not None and shape.when not in config for shape in spec.weight_shapes):
        return None  # the default is the constructor's; not guessed
    present = tuple(s for s in spec.weight_shapes if s.when is None or config[s.when])
    return present, tuple(sorted({s.when for s in spec.weight_shapes if s.when}))


def _weight_name(entry: WeightEntry) -> str:
    return entry.weight.split(":")[0]


def _position(entry: WeightEntry) -> tuple[str, int] | None:
    """``(sub-layer, index)`` of a ``.keras`` weight: ``layers/<layer>[/<sub>]/vars/<i>``."""
    parts = entry.dataset.strip("/").split("/")
    if len(parts) < 3 or parts[-2] != "vars" or not parts[-1].isdigit():
        return None
    sublayer = "" if len(parts) < 4 or parts[-4] == "layers" else parts[-3]
    return sublayer, int(parts[-1])


def _known_weights(layers: list[_Layer], entries: list[WeightEntry], by_name: bool) -> Weights:
    """The shapes of each uniquely named layer's weights by name, where the layer table names them all."""
    named = Counter(layer.name for layer in layers)
    by_owner: dict[str, list[WeightEntry]] = defaultdict(list)
    for entry in entries:
        by_owner[entry.layer].append(entry)
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for layer in layers:
        known = _weight_shapes(layer)
        if known is None or layer.name is None or named[layer.name] != 1:
            continue
        matched, complete, _ = _match(known[0], by_owner.get(layer.name, []), by_name)
        if complete:
            shapes[layer.name] = {name: tuple(entry.shape) for name, entry in matched.items()}
    return shapes.get


def _match(
    shapes: tuple[WeightShape, ...], held: list[WeightEntry], by_name: bool
) -> tuple[dict[str, WeightEntry], bool, str]:
    """The held weights matched to ``shapes`` by name, whether they are exactly those, and the held weights' names."""
    if by_name:
        found = {_weight_name(e): e for e in held}
        matched = {s.name: found[s.name] for s in shapes if s.name in found}
        complete = len(matched) == len(shapes) == len(found)
        held_names = ", ".join(found) or "none"
    else:
        counts: Counter[str] = Counter()
        wanted = {}
        for shape in shapes:
            wanted[(shape.sublayer, counts[shape.sublayer])] = shape
            counts[shape.sublayer] += 1
        positions = {_position(e): e for e in held}
        matched = {wanted[p].name: e for p, e in positions.items() if p in wanted}
        complete = len(matched) == len(wanted) == len(positions)
        held_names = ", ".join(wanted[p].name if p in wanted else _weight_name(e) for p, e in positions.items())
    return matched, complete, held_names


def _layer_weight_problems(
    layer: _Layer, shapes: tuple[WeightShape, ...], switches: tuple[str, ...], held: list[WeightEntry], by_name: bool
) -> Iterator[str]:
    expected = ", ".join(s.name for s in shapes) or "none"
    matched, complete, held_names = _match(shapes, held, by_name)
    if not complete:
        said = ", ".join(f"{key}={layer.config[key]}" for key in switches)
        yield (
            f"{layer.label}: config implies weights {expected}{f' ({said})' if said else ''} "
            f"but the file holds {held_names or 'none'}"
        )
        return
    labels: dict[str, tuple[str, tuple[int, ...], int]] = {}
    for shape in shapes:
        tensor = matched[shape.name].shape
        for axis, size in shape.dims:
            if not -len(tensor) <= axis < len(tensor):
                yield f"{layer.label}: its {shape.name} has shape {tensor}, with no axis {axis}"
                return
            if size.startswith("@"):
                first = labels.setdefault(size, (shape.name, tensor, axis))
                if first[1][first[2]] != tensor[axis]:
                    yield f"{layer.label}: its {first[0]} has shape {first[1]} but its {shape.name} has shape {tensor}"
                    return
                continue
            value, keys = _size(size, layer.config)
            if value is not None and value != tensor[axis]:
                if keys:
                    said = ", ".join(f"{key}={_show(layer.config[key])}" for key in keys)
                    yield f"{layer.label}: config says {said} but its {shape.name} has shape {tensor}"
                else:
                    yield f"{layer.label}: its {shape.name} has shape {tensor}, where axis {axis} should be {value}"
                return


# A size no axis has: the config list lacks the item a weight axis reads.
_TOO_SHORT = -1


def _size(expression: str, config: dict) -> tuple[int | None, list[str]]:
    """The value of a ``weight_shapes`` size in ``config`` (None where the config does not fix it), and its keys.

    The value is ``-1``, which no axis matches, where a ``key[i]`` item lies past the end of the config's list.
    """
    value, keys = 1, []
    for factor in expression.split("*"):
        if factor.isdigit():
            value *= int(factor)
            continue
        key, _, index = factor.partition("[")
        keys.append(key)
        item = config.get(key)
        if index and isinstance(item, (list, tuple)):
            position = int(index.rstrip("]"))
            if position >= len(item):
                return _TOO_SHORT, keys  # Keras refuses a kernel_size of fewer items than the kernel's axes
            item = item[position]
        if isinstance(item, bool) or not isinstance(item, int):
            return None, keys
        value *= item
    return value, keys


def _show(value) -> str:
    return str(list(value)) if isinstance(value, tuple) else str(value)


def keras_weight_names(model: ModelFile) -> dict[str, str]:
    """The names of a ``.keras`` file's weights stored by position only, by dataset path.

    A ``.keras`` weights file keeps a layer's variables as ``vars/0``, ``vars/1``...;
    where the layer table lists every weight the layer's class creates (in creation
    order, switched on or off by its config, as :func:`check_agreement` checks them),
    position ``i`` is the ``i``-th of those. A layer whose held weights are not exactly
    those keeps its positions (nothing is guessed). Reads the config only: no TensorFlow.

    Args:
        model: an open model file (a ``.h5`` file names its weights itself: ``{}``).

    Returns:
        ``{dataset path: weight name}``, e.g. ``{"/layers/dense/vars/1": "bias"}``.
    """
    if model.format != "keras":
        return {}
    layers = list(_walk(model.config))
    named = Counter(layer.name for layer in layers)
    by_owner: dict[str, list[WeightEntry]] = defaultdict(list)
    for entry in model.entries:
        by_owner[entry.layer].append(entry)
    names = {}
    for layer in layers:
        known = _weight_shapes(layer)
        if known is None or layer.name is None or named[layer.name] != 1:
            continue
        matched, complete, _ = _match(known[0], by_owner.get(layer.name, []), by_name=False)
        if complete:
            names.update({entry.dataset: name for name, entry in matched.items()})
    return names
