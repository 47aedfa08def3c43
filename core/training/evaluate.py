"""Evaluate live Keras models on a data file, with the loss and metrics fine-tuning would use.

The loss and metrics are resolved once, from the *reference* model (the model
before pruning, or a baseline): the command-line options, else its saved
compile settings, else a default inferred from its output and the labels. Every
model is then evaluated with those same settings, so the numbers compare.

A model is never compiled for evaluation: a functional view of it
(``keras.Model(model.inputs, model.outputs)``), which shares its layers and
variables, is compiled instead. So evaluating changes neither the compile
settings a model is later saved with nor anything else about it, and the view
sees every later change to the model's weights.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunectl.core.errors import OptionError
from prunectl.core.io.keras_io import CompileSpec, LoadedModel, import_keras
from prunectl.core.options import check_number, check_reader
from prunectl.core.training import data as datamod
from prunectl.core.training.evaluation import Evaluation, accuracy_key, same_metric  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate on and how.

    Attributes:
        data: the data file (``.npz``, ``.h5`` or ``.csv``) with inputs and targets.
        reader: reader options (``x_key``, ``y_key``, ``label_col``).
        batch_size: samples per batch.
        loss: a Keras loss name; default: the reference model's saved loss, else inferred.
        metrics: Keras metric names; default: the saved ones, else inferred.
        need_accuracy: add an ``accuracy`` metric when the targets are class labels
            and the resolved metrics have none (for the accuracy gate).
        need_metrics: Keras metric names to add where the resolved metrics lack them
            (for the metric gates); a name Keras does not know is left out.

    Raises:
        OptionError: ``batch_size`` below 1.
    """

    data: Path
    reader: tuple[tuple[str, str], ...] = ()
    batch_size: int = 32
    loss: str | None = None
    metrics: tuple[str, ...] = ()
    need_accuracy: bool = False
    need_metrics: tuple[str, ...] = ()

    def __post_init__(self):
        check_number(self.batch_size, "batch_size", 1, integer=True)
        check_reader(self.data, self.reader)

    def get_config(self) -> dict:
        return {
            "data": str(self.data),
            "reader": dict(self.reader),
            "batch_size": self.batch_size,
            "loss": self.loss,
            "metrics": list(self.metrics),
            "need_accuracy": self.need_accuracy,
            "need_metrics": list(self.need_metrics),
        }

    @classmethod
    def from_config(cls, config: dict) -> EvalOptions:
        """The options :meth:`get_config` describes."""
        return cls(
            **{
                **config,
                "data": Path(config["data"]),
                "reader": tuple(dict(config["reader"]).items()),
                "metrics": tuple(config["metrics"]),
                "need_metrics": tuple(config.get("need_metrics", ())),
            }
        )


def _output_is_softmax(model) -> bool:
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    return last.__class__.__name__ == "Softmax" or getattr(activation, "__name__", "") == "softmax"


def resolve_compile(
    model,
    saved: CompileSpec | None,
    y,
    loss: str | None = None,
    metrics: tuple[str, ...] = (),
    optimizer: str | None = None,
    purpose: str = "fine-tune with",
) -> tuple[CompileSpec, str]:
    """Choose loss, metrics and optimizer: the options, else the saved settings, else a default.

    The default for integer labels and a softmax output is sparse categorical
    cross-entropy with accuracy.

    Args:
        model: the Keras model the settings are for.
        saved: the compile settings recovered from its file, or None.
        y: the targets (their dtype decides the default).
        loss, metrics, optimizer: names given as options (they win over saved ones).
        purpose: completes "cannot tell which loss to ..." in the error message.

    Returns:
        The compile settings and where the loss came from (``option``, ``saved`` or ``default``).

    Raises:
        OptionError: an unknown loss, metric or optimizer name, or no loss given,
            none saved, and none can be inferred.
    """
    keras = import_keras()
    for module, kind, names in (
        (keras.losses, "loss", [loss]),
        (keras.metrics, "metrics", metrics),
        (keras.optimizers, "optimizer", [optimizer]),
    ):
        for name in (n for n in names if n is not None):
            try:
                known = bool(name.strip()) and module.get(name) is not None
            except (ValueError, TypeError):
                known = False
            if not known:
                shown = name if name.strip() else repr(name)
                field = "metrics" if kind == "metric" else kind
                raise OptionError(f"unknown Keras {kind} name. Received: {{{field}}} {shown}", field) from None
    saved = saved or CompileSpec()
    if loss:
        source = "option"
    elif saved.loss is not None:
        loss, source = saved.loss, "saved"
    elif np.dtype(y.dtype).kind in "iu" and _output_is_softmax(model):
        loss, source = "sparse_categorical_crossentropy", "default"
    else:
        raise OptionError(
            f"cannot tell which loss to {purpose}: the model has no saved compile config and "
            "its output or labels do not imply one; pass --loss (and --metrics). "
            f"Received: labels of dtype {np.dtype(y.dtype)}, output layer {model.layers[-1].name!r}"
        )
    chosen = metrics or saved.metrics or (("accuracy",) if source == "default" else ())
    return CompileSpec(loss, tuple(chosen), optimizer or saved.optimizer or "adam"), source


def identifier_name(identifier) -> str:
    """A loss or metric identifier as saved (a name or a serialized dict) as a short name."""
    if isinstance(identifier, dict):
        return identifier.get("class_name") or identifier.get("config", {}).get("name", "?")
    return str(identifier)


def _is_accuracy(metric) -> bool:
    return identifier_name(metric).lower().replace("_", "").endswith("accuracy")


def _missing_metrics(names: tuple[str, ...], spec: CompileSpec) -> tuple[str, ...]:
    """The names in ``names`` that Keras knows as metrics and ``spec`` does not compute yet (the loss counts)."""
    keras = import_keras()
    have = [identifier_name(m) for m in spec.metrics] + ["loss"]
    out: list[str] = []
    for name in names:
        if any(same_metric(name, h) for h in have + out):
            continue
        name = _KERAS_NAMES.get(name.lower(), name)
        try:
            known = keras.metrics.get(name) is not None
        except (ValueError, TypeError):
            known = False
        if known:
            out.append(name)
    return tuple(out)


# Short names Keras's metrics.get does not resolve.
_KERAS_NAMES = {"rmse": "root_mean_squared_error", "r2": "r2_score"}


class Evaluator:
    """Evaluates models on one data file with the compile settings resolved from a reference model.

    Args:
        reference: the reference model as loaded (its saved compile settings are used).
        options: the data and the evaluation settings.

    Raises:
        DataError: unreadable data, or data that does not fit the model.
        OptionError: an unknown loss or metric name, or a loss that cannot be inferred.

    Example:
        >>> evaluate = Evaluator(loaded, EvalOptions(Path("test.npz")))
        >>> evaluate(loaded.model)
        {'loss': 0.083, 'accuracy': 0.976}
    """

    def __init__(self, reference: LoadedModel, options: EvalOptions):
        model = reference.model
        self.options = options
        self.dataset = datamod.read_dataset(options.data, lazy=True, **dict(options.reader))
        datamod.check_fits(
            self.dataset, tuple(model.inputs[0].shape[1:]), tuple(model.outputs[0].shape[1:]), name="evaluation data"
        )
        y = self.dataset.y
        assert y is not None  # check_fits refuses data without targets
        self.spec, self.loss_source = resolve_compile(
            model, reference.compile_spec, y, options.loss, options.metrics, purpose="evaluate with"
        )
        labels = np.dtype(y.dtype).kind in "biu"
        if options.need_accuracy and labels and not any(_is_accuracy(m) for m in self.spec.metrics):
            self.spec = CompileSpec(self.spec.loss, (*self.spec.metrics, "accuracy"), self.spec.optimizer)
        wanted = _missing_metrics(options.need_metrics, self.spec)
        if wanted:
            self.spec = CompileSpec(self.spec.loss, (*self.spec.metrics, *wanted), self.spec.optimizer)
        dtypes = (np.dtype(model.inputs[0].dtype), np.dtype(y.dtype) if labels else np.float32)
        self.batches = datamod.batches(self.dataset, options.batch_size, dtypes)
        self._view: tuple[Any, Any] | None = None

    def __call__(self, model) -> dict[str, float]:
        """Evaluate ``model`` and return its loss and metrics by name.

        Evaluating the same model again (e.g. after its weights changed) reuses
        its compiled view, so Keras traces the evaluation only once.
        """
        if self._view is None or self._view[0] is not model:
            self._view = (model, self._compiled_view(model))
        values = self._view[1].evaluate(self.batches, verbose=0, return_dict=True)
        return {key: float(value) for key, value in values.items()}

    def _compiled_view(self, model):
        from prunectl.core.io.keras_io import compile_model

        keras = import_keras()
        view = keras.Model(model.inputs, model.outputs, name=f"{model.name}_evaluation")
        compile_model(view, self.spec)
        return view

    def describe(self) -> dict:
        """The data and compile settings, as recorded in reports."""
        return {
            "data": str(self.options.data),
            "samples": len(self.dataset),
            "loss": identifier_name(self.spec.loss),
            "loss_source": self.loss_source,
            "metrics": [identifier_name(m) for m in self.spec.metrics],
        }


def evaluation_block(settings: dict, reference: tuple[str, dict] | None, result: tuple[str, dict]) -> Evaluation:
    """The report's ``evaluation`` block, read by the ``max-accuracy-drop`` gate.

    Args:
        settings: the data and compile settings (:meth:`Evaluator.describe`).
        reference: ``(label, values)`` of the reference model ("before pruning",
            "baseline"), or None when there is none.
        result: ``(label, values)`` of the model being judged.
    """
    return Evaluation(settings, result, reference)


def finetune_evaluation(section: dict) -> Evaluation | None:
    """The ``evaluation`` block of a fine-tuning report section: before pruning -> its last evaluation.

    Returns:
        None when fine-tuning had no validation data (it evaluated nothing).
    """
    evaluation = section["evaluation"]
    if "before_pruning" not in evaluation:
        return None
    # The evaluations are recorded in the order they ran; the last judged the saved model
    # (with an L1 penalty, the weight step runs after fine-tuning).
    last = list(evaluation)[-1]
    settings = {
        "data": section["data"]["validation"],
        "samples": section["data"]["validation_samples"],
        "loss": section["compile"]["loss"],
        "loss_source": section["compile"]["loss_source"],
        "metrics": section["compile"]["metrics"],
    }
    label = last.replace("_", " ").replace("finetuning", "fine-tuning")
    return evaluation_block(settings, ("before pruning", evaluation["before_pruning"]), (label, evaluation[last]))


def evaluate_files(model: Path, baseline: Path | None, options: EvalOptions) -> Evaluation:
    """Evaluate a saved model, and a baseline model if given, on ``options.data``.

    Both are evaluated with the compile settings resolved from the baseline
    (the reference), else from the model.

    Args:
        model: the model file to judge.
        baseline: the model file it is compared with, or None.
        options: the data and the evaluation settings.

    Returns:
        The report's ``evaluation`` block (see :func:`evaluation_block`).

    Raises:
        ModelFileError, UnsafeModelError: a model that cannot be loaded.
        DataError, OptionError: as :class:`Evaluator`.
    """
    from prunectl.core.io.keras_io import load_model
    from prunectl.core.io.modelfile import open_model_file

    # Both files are opened (inspected in a child process, see core.io.watchdog) before Keras is imported.
    with ExitStack() as files:
        sources = [files.enter_context(open_model_file(path)) for path in (model, baseline) if path is not None]
        judged = load_model(sources[0])
        reference = load_model(sources[1]) if baseline is not None else None
    evaluate = Evaluator(reference or judged, options)
    before = (f"baseline {baseline}", evaluate(reference.model)) if reference is not None else None
    return evaluation_block(evaluate.describe(), before, (str(model), evaluate(judged.model)))
