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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prunectl.core.errors import OptionError
from prunectl.core.options import check_number
from prunectl.core.registry import Registry
from prunectl.core.training.evaluation import Evaluation, metric_better, same_metric

GATE_EXIT_CODE = 3
GATES: Registry[Gate] = Registry("gate")


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict; ``detail`` holds a gate's own fields (the metric, the values compared...)."""

    name: str
    value: float | None
    limit: float
    passed: bool
    message: str
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "value": self.value,
            "limit": self.limit,
            "passed": self.passed,
            "message": self.message,
            **self.detail,
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
    #: The option may be given several times, each value a gate of its own.
    repeatable = False

    def __init__(self, limit: float):
        self.limit = self.validate(limit)

    #: Whether the limit is a fraction in [0, 1] (else any number >= 0).
    fraction = False

    @property
    def field(self) -> str:
        """The gate's option as a field name (``max_loss_increase``), which the CLI shows as its flag."""
        return self.registered_name.replace("-", "_")

    def validate(self, limit: float) -> float:
        check_number(limit, self.field, 0, 1 if self.fraction else None)
        return limit

    def get_config(self) -> dict:
        return {"limit": self.limit}

    def measure(self, report) -> float | None:
        raise NotImplementedError

    def check(self, report) -> GateResult:
        value = self.measure(report)
        title, detail = self.title(), self.detail(report)
        if value is None:
            message = f"{title}: not measured ({self.why_missing(report)})"
            return GateResult(self.registered_name, None, self.limit, False, message, detail)
        passed = value >= self.limit if self.direction == ">=" else value <= self.limit
        verdict = "passed" if passed else "failed"
        return GateResult(
            self.registered_name,
            value,
            self.limit,
            passed,
            f"{title} {verdict}: measured {self.format(value)}, limit {self.direction} {self.format_limit()}"
            + self.explain(report),
            detail,
        )

    missing = "the report has no value for it"

    def why_missing(self, report) -> str:
        """Why ``measure`` found no value (default: :attr:`missing`)."""
        return self.missing

    def title(self) -> str:
        """The gate as named in its messages."""
        return self.registered_name

    def detail(self, report) -> dict:
        """Extra fields of the gate's report entry."""
        return {}

    def explain(self, report) -> str:
        """Appended to a measured verdict's message: what the value was computed from."""
        return ""

    def format(self, value: float) -> str:
        return f"{value:,.0f}{self.unit}" if self.unit else f"{value:.4f}"

    def format_limit(self) -> str:
        return self.format(self.limit)


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

    def why_missing(self, report) -> str:
        evaluation = report.evaluation
        if evaluation is None or evaluation.reference is None:
            return self.missing
        measured = evaluation.measured()
        return (
            f"the evaluation measured {', '.join(measured) or 'nothing'} and no accuracy; gate a model without "
            "accuracy (a regressor) with --max-loss-increase D or --max-metric-drop NAME=D"
        )


def parse_amount(text: str, name: str) -> tuple[float, bool]:
    """Read a limit written as ``D`` (absolute) or ``D%`` (relative): ``"5%"`` -> ``(0.05, True)``.

    Raises:
        OptionError: not a number >= 0 (with or without one ``%``).
    """
    raw = str(text).strip()
    relative = raw.endswith("%")
    try:
        value = float(raw[:-1] if relative else raw)
    except ValueError:
        value = float("nan")
    if value != value or value < 0 or value == float("inf"):
        raise OptionError(
            f"{{{name}}} must be a number >= 0, or a percentage such as 5%. Received: {{{name}}}={text}", name
        )
    return (value / 100 if relative else value), relative


class _Worsening(Gate):
    """Base of gates on one evaluated value (``key``) that may worsen by at most a limit, absolute or relative."""

    direction = "<="
    value_type = str
    needs_data = True
    key = "loss"

    def __init__(self, limit: Any):
        self.text = str(limit)
        self.limit, self.relative = parse_amount(self.text, self.field)

    def get_config(self) -> dict:
        return {"limit": self.text}

    def better(self) -> str | None:
        """``"higher"`` or ``"lower"``: which way the value improves (None: unknown)."""
        return metric_better(self.key)

    def values(self, report) -> tuple[float, float] | None:
        """The reference's and the result's value of :attr:`key`, or None where either is missing."""
        evaluation: Evaluation | None = report.evaluation
        return evaluation.pair(self.key) if evaluation is not None else None

    def measure(self, report) -> float | None:
        pair, better = self.values(report), self.better()
        if pair is None or better is None:
            return None
        before, after = pair
        worse = after - before if better == "lower" else before - after
        if not self.relative:
            return worse
        return worse / abs(before) if before else None

    def format(self, value: float) -> str:
        return f"{100 * value:+.2f}%" if self.relative else f"{value:+.4f}"

    def format_limit(self) -> str:
        return f"{100 * self.limit:g}%" if self.relative else f"{self.limit:.4f}"

    def detail(self, report) -> dict:
        pair = self.values(report)
        return {
            "metric": self.key,
            "better": self.better(),
            "relative": self.relative,
            "reference": pair[0] if pair else None,
            "result": pair[1] if pair else None,
        }

    def explain(self, report) -> str:
        pair = self.values(report)
        if pair is None:
            return ""
        kind = "relative" if self.relative else "absolute"
        return f" ({kind}; {self.key} {pair[0]:.6g} -> {pair[1]:.6g}, {self.better()} is better)"

    def why_missing(self, report) -> str:
        evaluation: Evaluation | None = report.evaluation
        if evaluation is None or evaluation.reference is None:
            return "the report has no evaluation before and after; evaluate on --data"
        measured = ", ".join(evaluation.measured()) or "nothing"
        if self.values(report) is None:
            return (
                f"no {self.key} was measured before and after (measured: {measured}); name a Keras metric, "
                "and with --finetune-epochs add it to --metrics"
            )
        if self.better() is None:
            return f"cannot tell whether a higher or a lower {self.key} is better; measured: {measured}"
        return f"the {self.key} before was 0, so a relative change is undefined; give an absolute limit"


@GATES.register("max-loss-increase")
class MaxLossIncrease(_Worsening):
    """The loss on --data may rise by at most D (absolute), or by D% of the loss before (relative).

    The reference is the model before pruning (``prune``) or the baseline (``report``).
    """

    metavar = "D|D%"
    missing = "the report has no loss evaluated before and after; evaluate on --data"


@GATES.register("max-metric-drop")
class MaxMetricDrop(_Worsening):
    """The metric NAME on --data may worsen (drop, or rise for errors like mae) by at most D or D%; repeatable.

    Worsening follows the metric's direction: a drop for accuracy-like metrics, a
    rise for error-like ones (mae, mse, rmse, loss...).
    """

    metavar = "NAME=D"
    repeatable = True

    def __init__(self, limit: Any):
        text = str(limit)
        name, sep, amount = text.rpartition("=")
        if not sep or not name.strip():
            raise OptionError(
                f"{{{self.field}}} must be NAME=D or NAME=D% (a metric and its largest worsening). "
                f"Received: {{{self.field}}}={text}",
                self.field,
            )
        self.key = name.strip()
        self.text = text
        self.limit, self.relative = parse_amount(amount, self.field)

    def title(self) -> str:
        return f"{self.registered_name} {self.key}"

    def values(self, report) -> tuple[float, float] | None:
        evaluation: Evaluation | None = report.evaluation
        if evaluation is None:
            return None
        key = next((k for k in evaluation.measured() if same_metric(k, self.key)), None)
        return evaluation.pair(key) if key is not None else None


def gate_pairs(values: Mapping) -> tuple[tuple[str, Any], ...]:
    """The ``(gate, limit)`` pairs in option values keyed by parameter name (``max_params``), in registry order.

    A repeatable gate's value is a sequence of limits, each a pair of its own;
    None or an empty sequence is a gate not given.
    """
    pairs: list[tuple[str, Any]] = []
    for name in GATES.names():
        value = values.get(name.replace("-", "_"))
        if value is None:
            continue
        limits = tuple(value) if GATES.get(name).repeatable and not isinstance(value, str) else (value,)
        pairs += [(name, limit) for limit in limits]
    return tuple(pairs)


def gate_metrics(pairs) -> tuple[str, ...]:
    """The metric names the gates in ``(gate, limit)`` pairs compare, for the evaluation to measure."""
    gates = (GATES.get(name)(limit) for name, limit in pairs)
    return tuple(gate.key for gate in gates if isinstance(gate, MaxMetricDrop))


def gate_config(pairs) -> dict:
    """``(gate, limit)`` pairs as recorded in reports and recipes: a repeatable gate's limits as a list."""
    out: dict[str, Any] = {}
    for name, limit in pairs:
        if GATES.get(name).repeatable:
            out.setdefault(name, []).append(limit)
        else:
            out[name] = limit
    return out


def check_gates(report, limits: dict[str, float]) -> list[GateResult]:
    """Check ``report`` against ``{gate name: limit}`` (gates with a None limit are skipped).

    Raises:
        OptionError: an unknown gate name or a bad limit.
    """
    return [GATES.get(name)(limit).check(report) for name, limit in limits.items() if limit is not None]
