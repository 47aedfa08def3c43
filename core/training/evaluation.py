"""The typed evaluation block of a report: settings, a reference and a result.

This module is light (no numpy or Keras), so reports and gates read it without
loading the evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def accuracy_key(values: dict) -> str | None:
    """The first key of an evaluation's values that names an accuracy (``accuracy``,
    ``sparse_categorical_accuracy``...), or None."""
    return next((key for key in values if key.endswith("accuracy")), None)


def _canonical(name: str) -> str:
    key = name.lower().replace("_", "").replace(" ", "")
    return _ALIASES.get(key, key)


_ALIASES = {
    "mae": "meanabsoluteerror",
    "mse": "meansquarederror",
    "rmse": "rootmeansquarederror",
    "msle": "meansquaredlogarithmicerror",
    "mape": "meanabsolutepercentageerror",
    "kld": "kldivergence",
    "kullbackleiblerdivergence": "kldivergence",
    "acc": "accuracy",
    "r2": "r2score",
}
# Which way a Keras metric improves, by canonical name (see _canonical); names
# ending in "accuracy" improve upwards, "error" and "crossentropy" downwards.
_LOWER_IS_BETTER = frozenset(
    {"loss", "hinge", "squaredhinge", "categoricalhinge", "logcosh", "kldivergence", "poisson", "huber"}
    | {"falsepositives", "falsenegatives"}
)
_HIGHER_IS_BETTER = frozenset(
    {"auc", "precision", "recall", "r2score", "f1score", "fbetascore", "iou", "meaniou", "binaryiou", "onehotiou"}
    | {"onehotmeaniou", "cosinesimilarity", "truepositives", "truenegatives"}
    | {"precisionatrecall", "recallatprecision", "sensitivityatspecificity", "specificityatsensitivity"}
)


def metric_better(name: str) -> str | None:
    """``"higher"`` or ``"lower"``: which way a Keras metric (or loss) named ``name`` improves; None if unknown.

    Example:
        >>> metric_better("mae"), metric_better("sparse_categorical_accuracy"), metric_better("my_score")
        ('lower', 'higher', None)
    """
    key = _canonical(name)
    if key in _LOWER_IS_BETTER or key.endswith(("error", "crossentropy")):
        return "lower"
    if key in _HIGHER_IS_BETTER or key.endswith("accuracy"):
        return "higher"
    return None


def same_metric(a: str, b: str) -> bool:
    """Whether two metric names are one metric (``mae`` and ``mean_absolute_error``)."""
    return _canonical(a) == _canonical(b)


@dataclass(frozen=True)
class Evaluation:
    """A model judged against a reference on the same data with the same compile settings.

    Attributes:
        settings: the data and compile settings (``data``, ``samples``, ``loss``, ``loss_source``, ``metrics``).
        result: ``(label, values)`` of the model being judged.
        reference: ``(label, values)`` of the reference model ("before pruning", "baseline"), or None.
    """

    settings: dict = field(default_factory=dict)
    result: tuple[str | None, dict] = (None, {})
    reference: tuple[str | None, dict] | None = None

    def accuracy_drop(self) -> float | None:
        """Reference accuracy minus result accuracy, or None where either has no accuracy."""
        if self.reference is None:
            return None
        accuracies = []
        for _, values in (self.reference, self.result):
            key = accuracy_key(values)
            if key is None:
                return None
            accuracies.append(values[key])
        return accuracies[0] - accuracies[1]

    def measured(self) -> list[str]:
        """The names of the values measured on both sides (the result's alone without a reference)."""
        names = list(self.result[1])
        return [n for n in names if n in self.reference[1]] if self.reference is not None else names

    def pair(self, key: str) -> tuple[float, float] | None:
        """The reference's and the result's value of ``key``, or None where either lacks it."""
        if self.reference is None or key not in self.reference[1] or key not in self.result[1]:
            return None
        return self.reference[1][key], self.result[1][key]

    def to_dict(self) -> dict:
        """The report's ``evaluation`` block."""

        def side(pair):
            return None if pair is None else {"label": pair[0], "values": pair[1]}

        return {**self.settings, "reference": side(self.reference), "result": side(self.result)}

    @classmethod
    def from_dict(cls, block: dict) -> Evaluation:
        """Read a block as :meth:`to_dict` writes it (missing parts read as empty)."""

        def side(part):
            part = part if isinstance(part, dict) else {}
            return part.get("label"), dict(part.get("values") or {})

        settings = {k: v for k, v in block.items() if k not in ("reference", "result")}
        reference = block.get("reference")
        return cls(settings, side(block.get("result")), None if not reference else side(reference))
