"""keras_hub backbones through structural pruning: they come out as plain Functional models.

A keras_hub backbone (``BertBackbone``, ``GPT2Backbone``, ``ViTBackbone``,
``GemmaBackbone``) is a Functional subclass whose config holds its constructor's
arguments (one ``intermediate_dim`` for every block), not a list of layers. Once
its blocks are pruned unevenly no constructor call builds it again, so
``keras.models.clone_model`` (which :func:`~prunectl.core.structure.plan.apply_plan`
uses) gives a plain ``keras.Model`` over the same layer classes, each with its own
smaller config, and outputs of the same structure (a dict for BERT). Nothing here
imports keras_hub: the layers are rebuilt from their own classes.
"""

from __future__ import annotations

from prunectl.core.layers.hub_structure import UNREAD_CONFIG

_PLAIN = ("Functional", "Sequential", "Model")


def readable_config(layer) -> dict:
    """``layer``'s config as its own class reads it back.

    Leaves out the keys its class writes and its constructor rejects (``UNREAD_CONFIG``), and
    for a class with no ``get_config`` of its own whose automatic one Keras refuses (keras_hub's
    Gemma ``RMSNormalization``, given a dtype policy object) reads the constructor's
    arguments back from the layer's attributes of the same names.

    Raises:
        NotImplementedError: the class has no usable config and its arguments are not attributes.
    """
    return _readable(layer, layer.get_config)


def keep_readable(layer) -> None:
    """Make ``layer`` save the config :func:`readable_config` gives.

    The saved config is whatever ``get_config`` returns at save time, so the instance's
    method is replaced where the class's own would not load back; the class is left alone.
    """
    write = layer.get_config
    try:
        write()
    except NotImplementedError:
        pass
    else:
        if layer.__class__.__name__ not in UNREAD_CONFIG:
            return
    layer.get_config = lambda: _readable(layer, write)


def _readable(layer, write) -> dict:
    try:
        config = write()
    except NotImplementedError:
        config = _constructor_config(layer)
    for key in UNREAD_CONFIG.get(layer.__class__.__name__, ()):
        config.pop(key, None)
    return config


def _constructor_config(layer) -> dict:
    import inspect

    from prunectl.core.io.keras_io import import_keras

    keras = import_keras()
    config = {
        "name": layer.name,
        "trainable": layer.trainable,
        "dtype": keras.saving.serialize_keras_object(layer.dtype_policy),
    }
    for name, parameter in inspect.signature(layer.__class__.__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        value = getattr(layer, name, parameter.default)
        if value is inspect.Parameter.empty or not isinstance(value, (int, float, str, bool, type(None), list, tuple)):
            raise NotImplementedError(
                f"{layer.__class__.__name__} has no get_config and its argument {name!r} is not readable back. "
                f"Received: {layer.name!r}"
            )
        config[name] = value
    return config


def plain_model_note(model) -> str | None:
    """What a user should know when ``model``'s class is a Functional subclass the rebuild does not keep, or None.

    Args:
        model: the model before pruning.

    Returns:
        One line for the run's notes, or None for a plain Functional or Sequential model.
    """
    cls = model.__class__
    if cls.__name__ in _PLAIN:
        return None
    return (
        f"the pruned model is a plain Functional keras.Model over the same layers, not a {cls.__name__}: "
        f"its blocks no longer share one config. Load it with keras.saving.load_model (import {_package(cls)} first) "
        "and use it where a backbone is called, e.g. as the backbone argument of a task model"
    )


def _package(cls) -> str:
    return cls.__module__.split(".", 1)[0]
