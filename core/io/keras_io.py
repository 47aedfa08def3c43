"""Load and save models through Keras (TensorFlow is imported here, lazily).

Only the steps that must build a model in Keras come here: format conversion,
the ``keras`` engine, and later fine-tuning and structural pruning. Loading is
always ``compile=False`` with Keras's safe mode on, and the compile settings are
recovered from the file's own training config, because Keras 3 cannot
deserialize some legacy ones (``loss="mse"`` in a ``.h5`` fails with "Could not
deserialize 'keras.metrics.mse'").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunectl.core.errors import ModelFileError, SetupError, UnsafeModelError
from prunectl.core.io.atomic import scratch_tempdir
from prunectl.core.io.modelfile import ModelFile


def import_keras():
    """Import and return ``keras`` (on the TensorFlow backend unless ``KERAS_BACKEND`` says otherwise).

    How much TensorFlow logs is the caller's choice: the CLI silences it before
    any command runs (``prunectl.cli.quiet``); the library never touches streams.
    """
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    return keras


@dataclass(frozen=True)
class CompileSpec:
    """Compile settings recovered from a saved model.

    Attributes:
        loss: a loss identifier or serialized loss (``"mse"``), or None.
        metrics: metric identifiers as saved.
        optimizer: a serialized optimizer config, an optimizer name, or None.
    """

    loss: Any = None
    metrics: tuple = ()
    optimizer: Any = None


@dataclass
class LoadedModel:
    """A Keras model with what was learnt while loading it.

    Attributes:
        model: the ``keras.Model``.
        compile_spec: the recovered compile settings, or None if the file had none.
        notes: human-readable remarks (e.g. a compile setting that was dropped).
    """

    model: Any
    compile_spec: CompileSpec | None
    notes: list[str] = field(default_factory=list)


def saved_optimizer(training_config: dict | None):
    """The optimizer a file's training/compile config names: its config (a dict) or its name; None for none."""
    config = training_config or {}
    return config.get("optimizer_config") or config.get("optimizer")


def compile_spec_from(model_file: ModelFile) -> CompileSpec | None:
    """Recover loss, metrics and optimizer from a file's training/compile config."""
    config = model_file.training_config
    if not config:
        return None
    optimizer = saved_optimizer(config)
    if optimizer is None and model_file.format == "keras" and "optimizer/vars" in model_file.h5:
        optimizer = model_file.h5["optimizer/vars"].attrs.get("name")
    metrics = config.get("metrics")
    # A model compiled without metrics saves null or []: no metric, not one named "()".
    metrics = () if not metrics else tuple(metrics) if isinstance(metrics, (list, tuple)) else (metrics,)
    return CompileSpec(config.get("loss"), metrics, optimizer)


def _resolve(keras, module, identifier):
    if isinstance(identifier, dict):
        return module.deserialize(identifier)
    return module.get(identifier)


def compile_model(model, spec: CompileSpec) -> list[str]:
    """Compile ``model`` with ``spec``, dropping what Keras cannot rebuild.

    Returns:
        Notes on anything that could not be restored.
    """
    keras = import_keras()
    notes = []
    try:
        optimizer = _resolve(keras, keras.optimizers, spec.optimizer) if spec.optimizer else "adam"
    except (ValueError, TypeError) as exc:
        notes.append(f"optimizer not restored ({exc}); using adam")
        optimizer = "adam"
    loss = spec.loss
    if isinstance(loss, dict) and "class_name" in loss:
        try:
            loss = keras.losses.deserialize(loss)
        except (ValueError, TypeError) as exc:
            notes.append(f"loss not restored ({exc})")
            loss = None
    metrics = [m for m in spec.metrics if m is not None]
    try:
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics or None)
    except (ValueError, TypeError) as exc:
        notes.append(f"metrics not restored ({exc})")
        model.compile(optimizer=optimizer, loss=loss)
    return notes


def hub_class(config) -> str | None:
    """The first class a model config takes from keras_hub (by module or registered name), or None."""
    if isinstance(config, dict):
        module, registered = config.get("module"), config.get("registered_name")
        if (isinstance(module, str) and module.split(".")[0] == "keras_hub") or (
            isinstance(registered, str) and registered.startswith("keras_hub>")
        ):
            return str(registered or config.get("class_name"))
        values: list = list(config.values())
    elif isinstance(config, list):
        values = config
    else:
        return None
    return next((found for value in values if (found := hub_class(value)) is not None), None)


def import_hub_for(model_file: ModelFile) -> None:
    """Import keras_hub when ``model_file``'s config names one of its classes, so Keras finds them registered.

    Raises:
        SetupError: keras_hub is not importable.
    """
    needed = hub_class(model_file.config)
    if needed is None:
        return
    try:
        import keras_hub  # noqa: F401 (registers its classes with Keras)
    except ImportError:
        raise SetupError(
            f"{model_file.path.name} needs keras_hub to load (pip install keras-hub / prunectl[hub]). "
            f"Received: {needed}"
        ) from None


def load_model(model_file: ModelFile, unsafe: bool = False) -> LoadedModel:
    """Load ``model_file`` in Keras with safe mode, then restore its compile settings.

    Args:
        model_file: the already validated file (see :func:`open_model_file`).
        unsafe: allow deserializing Python code (Lambda layers) stored in the file.

    Raises:
        UnsafeModelError: the file holds code and ``unsafe`` is False.
        ModelFileError: Keras cannot rebuild the model (e.g. an unknown custom layer).
        SetupError: a ``prunectl.layers`` entry point cannot be loaded.
    """
    from prunectl.core.layers import load_entry_points

    keras = import_keras()
    # A package shipping layer specs usually defines its (Keras-registered) layer classes in the same module.
    load_entry_points()
    import_hub_for(model_file)
    path = model_file.path
    try:
        with scratch_tempdir():  # Keras's asset folder outlives a failed or interrupted load otherwise
            model = keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as exc:  # Keras raises bare ValueError/TypeError for many causes
        message = " ".join(str(exc).split())
        if "safe_mode" in message or "unsafe" in message.lower():
            raise UnsafeModelError(
                "model holds Python code (a Lambda layer) that would run when it is loaded; "
                f"pass --unsafe only if you trust this file. Received: {str(path)!r}"
            ) from None
        raise ModelFileError(f"Keras cannot load the model: {message[:300]}. Received: {str(path)!r}") from None
    spec = compile_spec_from(model_file)
    notes = compile_model(model, spec) if spec and spec.loss is not None else []
    return LoadedModel(model, spec, notes)


def save_model(model, target: Path, fresh_optimizer: bool = False) -> None:
    """Save ``model`` with Keras to ``target`` (uncompressed; callers recompress).

    Args:
        model: the ``keras.Model``.
        target: the output path.
        fresh_optimizer: first build a compiled model's optimizer for its variables, if it is not built,
            and reset its state to a new optimizer's (same class and config). Keras builds the optimizer
            when it loads a compiled ``.keras`` and warns "Skipping variable loading for optimizer" unless
            the file holds as many variables as that build makes; a state trained before pruning is stale.
    """
    import_keras()
    if fresh_optimizer:
        reset_optimizer(model)
    model.save(target)


def reset_optimizer(model) -> None:
    """Build ``model``'s optimizer (if it has one) and set every one of its variables to a new one's values."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return
    variables = model.trainable_variables
    if not optimizer.built:
        optimizer.build(variables)
    fresh = optimizer.__class__.from_config(optimizer.get_config())
    fresh.build(variables)
    if len(fresh.variables) != len(optimizer.variables):  # not the same layout: leave the state as it is
        return
    for live, new in zip(optimizer.variables, fresh.variables):
        live.assign(new)


def sublayers(layer) -> list:
    """The layers ``layer`` tracks directly (its attributes, items of its list attributes), in tracking order.

    The one place prunectl walks into a live layer: Keras 3 offers no public API for it.
    """
    return list(layer._flatten_layers(include_self=False, recursive=False))


def own_variables(layer) -> list:
    """The variables ``layer`` itself created (not its sub-layers'), in the order a ``.keras`` file stores them."""
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


def copy_model(model):
    """A model of ``model``'s architecture holding copies of its weights (variables of its own).

    For keeping the model as it was while the steps change it in place (evaluated "before pruning").
    """
    keras = import_keras()
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy
