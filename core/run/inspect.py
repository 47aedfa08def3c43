"""``report``: a model's (or a saved report's) sparsity, optionally against a baseline, evaluated and gated."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunectl.core.errors import OptionError, ReportError
from prunectl.core.options import check_stdout
from prunectl.core.run.gates import GATES, gate_metrics
from prunectl.core.run.report import ModelReport, baseline_block, load_report, model_report

STDIN = "-"


def _is_model(target: str | None) -> bool:
    return target is not None and target != STDIN and Path(target).suffix.lower() != ".json"


def title(target: str) -> str:
    """How a report's source is named in its title: its path, or ``stdin`` for ``-``."""
    return "stdin" if target == STDIN else target


@dataclass(frozen=True)
class ReportRequest:
    """What one ``report`` run shows and checks.

    Attributes:
        target: a model file, a JSON report, or ``-`` (a JSON report on stdin).
        baseline: a model or report to compare with, or None.
        data: evaluate the model (and a model baseline) on this data, or None.
        all_weights: include rows for every weight, not only the prunable ones.
        gates: ``(gate name, limit)`` pairs.
        markdown: also write the report as Markdown here (``-``: stdout).
        as_json: the JSON report goes to stdout.

    Raises:
        OptionError: a bad gate limit, or options that contradict each other.
    """

    target: str
    baseline: str | None = None
    data: Path | None = None
    all_weights: bool = False
    gates: tuple[tuple[str, float], ...] = ()
    markdown: Path | None = None
    as_json: bool = False

    def __post_init__(self):
        check_stdout(self.as_json, self.markdown)
        if self.markdown is not None and str(self.markdown) != "-" and not Path(self.markdown).parent.is_dir():
            raise OptionError(
                f"Invalid value for '{{markdown}}': directory does not exist. Received: {str(self.markdown)!r}",
                "markdown",
            )
        for name, limit in self.gates:
            GATES.get(name)(limit)
        needing = [(name, limit) for name, limit in self.gates if GATES.get(name).needs_data]
        field = needing[0][0].replace("-", "_") if needing else ""
        shown = f"{{{field}}} {needing[0][1]}" if needing else ""
        if self.data is None:
            if needing and _is_model(self.target):
                raise OptionError(
                    f"{{{field}}} is measured on evaluation data; add {{data}} EVAL. "
                    f"Received: {shown} without {{data}}",
                    field,
                    "data",
                )
            return
        if not _is_model(self.target):
            raise OptionError(
                f"{{data}} evaluates a model, not a JSON report. Received: {{data}} {self.data} with {self.target}",
                "data",
            )
        if self.baseline is not None and not _is_model(self.baseline):
            raise OptionError(
                f"{{data}} evaluates {{baseline}} too; give a .h5 or .keras baseline. "
                f"Received: {{baseline}} {self.baseline}",
                "data",
                "baseline",
            )
        if needing and self.baseline is None:
            raise OptionError(
                f"{{{field}}} compares the model with a baseline; add {{baseline}} MODEL. "
                f"Received: {shown} without {{baseline}}",
                field,
                "baseline",
            )


def read_report(target: str, all_weights: bool = False) -> ModelReport:
    """The report of ``target``: a model file, a JSON report, or ``-`` (a report on stdin).

    Raises:
        ModelFileError, ReportError: an unreadable model or report, or one whose
            config and weights disagree (:class:`~prunectl.core.errors.InvalidModelError`).
    """
    from prunectl.core.io.agreement import check_agreement
    from prunectl.core.io.modelfile import open_model_file

    if target == STDIN:
        return ModelReport.from_saved(load_report(sys.stdin.read(), "<stdin>"))
    path = Path(target)
    if path.suffix.lower() == ".json":
        if not path.is_file():
            raise ReportError(f"report file not found. Received: {target!r}")
        return ModelReport.from_saved(load_report(path.read_text(encoding="utf-8", errors="replace"), target))
    with open_model_file(path) as model:
        check_agreement(model)  # a file Keras cannot load is refused here as by prune: no report of a non-model
        return model_report(model, all_weights=all_weights)


def run_report(request: ReportRequest) -> tuple[ModelReport, ModelReport | None]:
    """Read the target (and baseline), evaluate them on data if asked, and check the gates.

    Returns:
        The report (baseline rows, evaluation and gate verdicts included) and the baseline's own report, or None.

    Raises:
        OutputError: the ``markdown`` path is not a regular file, or is an input
            (checked before any work; an existing file is replaced, as a CI summary is).
        PrunectlError: an unreadable model, report or data file.
    """
    from dataclasses import replace

    from prunectl.core.io.atomic import check_output

    if request.markdown is not None and str(request.markdown) != "-":
        inputs = [Path(p) if p not in (None, "-") else None for p in (request.target, request.baseline)]
        check_output(Path(request.markdown), force=True, inputs=(*inputs, request.data))
    current = read_report(request.target, request.all_weights)
    before = read_report(request.baseline, request.all_weights) if request.baseline else None
    extra: dict[str, Any] = {}
    if before is not None and request.baseline is not None:
        extra["baseline"] = baseline_block(request.baseline, before.to_dict(), current.to_dict())
    if request.data is not None:
        from prunectl.core.training.evaluate import EvalOptions, evaluate_files

        extra["evaluation"] = evaluate_files(
            Path(request.target),
            Path(request.baseline) if request.baseline else None,
            EvalOptions(request.data, need_accuracy=True, need_metrics=gate_metrics(request.gates)),
        )
    facts = replace(current, **extra)
    gates = tuple(GATES.get(name)(limit).check(facts) for name, limit in request.gates)
    return replace(current, **extra, gates=gates), before
