"""Classifying the weights a saved file keeps below a layer, from the layer table alone (no Keras import).

A ``.keras`` weights file stores a layer's sub-layers in folders named by attribute
(``layers/transformer_encoder/_self_attention_layer/query_dense/vars/0``), and a
model whose config is constructor arguments (a subclassed Functional, such as a
keras_hub backbone) names its top-level folders after each layer's class
(``transformer_encoder_1``). Neither says what class a folder holds; the table's
``sublayers`` maps and Keras's folder naming do.
"""

from __future__ import annotations

import re

from prunectl.core.layers.spec import get_spec, specs

# A list attribute's items, in a sublayers path (``encoder_layers/*``).
ANY_ITEM = "*"


def sublayer_class(class_name: str, path: str) -> str | None:
    """The class of the sub-layer at attribute ``path`` below a ``class_name`` layer, where the table says.

    The path is resolved step by step: the longest prefix the layer's ``sublayers``
    map names gives a class, whose own map resolves the rest. ``*`` in a map matches
    any one folder (the items of a list attribute).

    Example:
        >>> sublayer_class("TransformerEncoder", "_self_attention_layer/query_dense")
        'EinsumDense'
    """
    parts = [p for p in path.split("/") if p]
    while parts:
        spec = get_spec(class_name)
        if spec is None or not spec.sublayers:
            return None
        for end in range(len(parts), 0, -1):
            found = _lookup(spec.sublayers, parts[:end])
            if found is not None:
                class_name, parts = found, parts[end:]
                break
        else:
            return None
    return class_name


def _lookup(sublayers, parts: list[str]) -> str | None:
    for key, value in sublayers.items():
        pattern = key.split("/")
        if len(pattern) == len(parts) and all(p in (ANY_ITEM, part) for p, part in zip(pattern, parts)):
            return value
    return None


def snake_case(class_name: str) -> str:
    """The folder name Keras gives a layer of ``class_name`` when it saves one (``ViTEncoder`` -> ``vi_t_encoder``).

    The same conversion as ``keras.src.utils.naming.to_snake_case``, copied so that
    reading a file imports no Keras.
    """
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def class_of_folder(folder: str) -> str | None:
    """The table's class whose saved folders are named ``folder`` (``transformer_encoder_1``), if exactly one.

    Keras names a saved layer's folder after its class, with ``_<n>`` after the
    first; a folder two table classes could have written is not guessed.
    """
    names = {snake_case(name): name for name in specs() if "." not in name}
    candidates = {folder, re.sub(r"_\d+$", "", folder)}
    found = {names[c] for c in candidates if c in names}
    return found.pop() if len(found) == 1 else None


def has_sublayers(class_name: str) -> bool:
    """Whether the table lists sub-layers holding their own weights for ``class_name``."""
    spec = get_spec(class_name)
    return bool(spec and spec.sublayers)
