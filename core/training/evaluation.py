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
