"""Quality gates: limits a report must meet, each measured from the report itself.

A gate reads a typed report's attributes: ``totals`` (the sparsity totals),
``size_bytes`` (the judged model file's size, or None) and ``evaluation``
(an :class:`~prunectl.core.training.evaluation.Evaluation`, or None).

Gates are small classes registered by name in :data:`GATES`; the CLI builds one
``--<name>`` option per gate from the registry. A run whose gates fail still
writes its outputs (they are what failed the gate), lists every gate with its
value and verdict in the report, and exits with :data:`GATE_EXIT_CODE`.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunectl.core.options import check_number
from prunectl.core.registry import Registry

GATE_EXIT_CODE = 3
GATES: Registry[Gate] = Registry("gate")


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict."""

    name: str
    value: float | None
    limit: float
    passed: bool
    message: str

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "value": self.value,
            "limit": self.limit,
            "passed": self.passed,
            "message": self.message,
        }


class Gate:
    """Base class: ``measure(report)`` returns a number, compared with ``limit``."""

    registered_name = "gate"
    #: ">=" when the value must reach the limit, "<=" when it must stay under it.
    direction = ">="
    unit = ""
    #: How the CLI parses and shows the limit.
    value_type: type = float
    metavar = "X"
    #: Measured from an evaluation on data, which the command must be given.
    needs_data = False

    def __init__(self, limit: float):
        self.limit = self.validate(limit)

    #: Whether the limit is a fraction in [0, 1] (else any number >= 0).
    fraction = False

    def validate(self, limit: float) -> float:
        field = self.registered_name.replace("-", "_")
        check_number(limit, field, 0, 1 if self.fraction else None)
        return limit

    def get_config(self) -> dict:
        return {"limit": self.limit}

    def measure(self, report) -> float | None:
        raise NotImplementedError

    def check(self, report) -> GateResult:
        value = self.measure(report)
        if value is None:
            return GateResult(
                self.registered_name, None, self.limit, False, f"{self.registered_name}: not measured ({self.missing})"
            )
        passed = value >= self.limit if self.direction == ">=" else value <= self.limit
        verdict = "passed" if passed else "failed"
        return GateResult(
            self.registered_name,
            value,
            self.limit,
            passed,
            f"{self.registered_name} {verdict}: measured {self.format(value)}, "
            f"limit {self.direction} {self.format(self.limit)}",
        )

    missing = "the report has no value for it"

    def format(self, value: float) -> str:
        return f"{value:,.0f}{self.unit}" if self.unit else f"{value:.4f}"


@GATES.register("min-sparsity")
class MinSparsity(Gate):
    """The prunable weights' sparsity (zeros / count) must reach X in [0, 1]."""

    fraction = True

    def measure(self, report) -> float:
        return report.totals["prunable"]["sparsity"]


@GATES.register("max-params")
class MaxParams(Gate):
    """The model's nonzero parameters must number at most N."""

    direction = "<="
    unit = " nonzero params"
    value_type = int
    metavar = "N"

    def measure(self, report) -> float:
        total = report.totals["all"]
        return total["count"] - total["zeros"]


@GATES.register("max-size")
class MaxSize(Gate):
    """The (output) model file must be at most BYTES on disk."""

    direction = "<="
    unit = " bytes"
    value_type = int
    metavar = "BYTES"
    missing = "the report names no model file size"

    def measure(self, report) -> float | None:
        return report.size_bytes


@GATES.register("max-accuracy-drop")
class MaxAccuracyDrop(Gate):
    """Accuracy on --data may drop by at most D in [0, 1] (vs --baseline, or before pruning)."""

    direction = "<="
    metavar = "D"
    needs_data = True
    missing = "the report has no accuracy evaluated before and after; evaluate on --data with an accuracy metric"
    fraction = True

    def measure(self, report) -> float | None:
        return report.evaluation.accuracy_drop() if report.evaluation is not None else None


def check_gates(report, limits: dict[str, float]) -> list[GateResult]:
    """Check ``report`` against ``{gate name: limit}`` (gates with a None limit are skipped).

    Raises:
        OptionError: an unknown gate name or a bad limit.
    """
    return [GATES.get(name)(limit).check(report) for name, limit in limits.items() if limit is not None]
