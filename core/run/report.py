"""Sparsity reports as typed values with one header, written as JSON (``schema_version`` 1).

A report's ``layers`` holds one row per prunable weight tensor; ``totals``
counts zeros over the prunable weights and over every weight of the model.
Sparsity is always zeros divided by weight count. Each report is built once,
with its gates' verdicts, and carries the exit code its command ends with
(``return_code``: 0, or ``GATE_EXIT_CODE`` when a gate failed).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from prunectl import __version__
from prunectl.core.errors import ReportError
from prunectl.core.io.agreement import keras_weight_names
from prunectl.core.io.modelfile import ModelFile, WeightEntry
from prunectl.core.run.gates import GATE_EXIT_CODE, GateResult
from prunectl.core.run.outcome import PruneOutcome
from prunectl.core.training.evaluation import Evaluation
from prunectl.core.weights.catalog import file_counts

SCHEMA_VERSION = 1


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def tool_versions() -> dict:
    """Versions of prunectl and the libraries it runs on (read without importing them)."""
    return {
        "prunectl": __version__,
        "keras": _version("keras"),
        "tensorflow": _version("tensorflow") or _version("tensorflow-cpu"),
        "h5py": _version("h5py"),
        "numpy": _version("numpy"),
        "python": platform.python_version(),
    }


def file_info(path: Path, fmt: str) -> dict:
    return {"path": str(path), "format": fmt, "size_bytes": os.path.getsize(path)}


def _ratio(zeros: int, count: int) -> float:
    return zeros / count if count else 0.0


def layer_rows(
    entries: Iterable[WeightEntry], zeros: dict[str, int], results: dict | None = None, all_weights: bool = False
) -> list[dict]:
    """One row per (prunable, unless ``all_weights``) weight tensor."""
    rows = []
    for entry in entries:
        if not (entry.prunable or all_weights):
            continue
        result = (results or {}).get(entry.key)
        row = {
            "layer": entry.layer,
            "class": entry.class_name,
            "weight": entry.weight,
            "shape": list(entry.shape),
            "count": entry.size,
            "zeros": zeros[entry.key],
            "sparsity": _ratio(zeros[entry.key], entry.size),
            "prunable": entry.prunable,
        }
        if results is not None:
            # A tensor that could not hold the run's pattern was selected but left as it was: not pruned.
            pruned = result is not None and result.left is None
            row["pruned"] = pruned
            row["threshold"] = result.threshold if result and pruned else None
            row["zeros_before"] = result.zeros_before if result else zeros[entry.key]
            if result is not None and (result.pattern or result.left):
                row["pattern"] = result.pattern
                row["pattern_left"] = result.left
        rows.append(row)
    return rows


def totals(entries: Iterable[WeightEntry], zeros: dict[str, int]) -> dict:
    """Counts and sparsity over the prunable weights and over all weights."""
    entries = list(entries)
    out = {}
    for name, chosen in (("prunable", [e for e in entries if e.prunable]), ("all", entries)):
        count = sum(e.size for e in chosen)
        zero = sum(zeros[e.key] for e in chosen)
        out[name] = {"count": count, "zeros": zero, "sparsity": _ratio(zero, count)}
    return out


@dataclass(frozen=True)
class Header:
    """What every report starts with: its schema, kind, creation time and the tool's versions."""

    kind: str
    created: str
    tool: dict
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def now(cls, kind: str) -> Header:
        """The header of a report of ``kind`` made now."""
        return cls(kind, _now(), tool_versions())

    def to_dict(self) -> dict:
        return {"schema_version": self.schema_version, "kind": self.kind, "created": self.created, "tool": self.tool}


class _Verdicts:
    """Gate verdicts and the exit code they give (mixed into reports that carry gates)."""

    gates: tuple[GateResult, ...]

    @property
    def return_code(self) -> int:
        """0, or :data:`~prunectl.core.run.gates.GATE_EXIT_CODE` when a gate failed."""
        missed = getattr(self, "search", None) is not None and not self.search.get("met")  # type: ignore[attr-defined]
        return GATE_EXIT_CODE if missed or any(not g.passed for g in self.gates) else 0

    def to_dict(self) -> dict:
        raise NotImplementedError

    def to_json(self) -> str:
        return to_json(self.to_dict())


@dataclass(frozen=True)
class PruneReport(_Verdicts):
    """The report of one ``prune`` run (``kind="prune"``)."""

    header: Header
    input: dict
    output: dict
    options: dict
    engine: str
    seconds: float
    layers: list[dict]
    totals: dict
    notes: list[str]
    report_path: str
    pipeline: dict
    structural: dict | None = None
    benchmark: dict | None = None
    evaluation: Evaluation | None = None
    finetune: dict | None = None
    gates: tuple[GateResult, ...] = ()
    weight_criterion: dict | None = None
    steps: list[dict] | None = None
    search: dict | None = None
    fold_batchnorm: dict | None = None
    export: dict | None = None
    # False on a multi-worker run's non-chief worker without -o: it trained, the chief wrote the files.
    written: bool = field(default=True, compare=False)

    @property
    def size_bytes(self) -> int:
        return self.output["size_bytes"]

    @property
    def size_ratio(self) -> float:
        return self.output["size_bytes"] / max(1, self.input["size_bytes"])

    def to_dict(self) -> dict:
        return {
            **self.header.to_dict(),
            "input": self.input,
            "output": self.output,
            "options": self.options,
            "engine": self.engine,
            "seconds": self.seconds,
            "layers": self.layers,
            "totals": self.totals,
            "notes": self.notes,
            **({"structural": self.structural} if self.structural else {}),
            **({"benchmark": self.benchmark} if self.benchmark else {}),
            **({"evaluation": self.evaluation.to_dict()} if self.evaluation else {}),
            "size_ratio": self.size_ratio,
            **({"finetune": self.finetune} if self.finetune is not None else {}),
            **({"weight_criterion": self.weight_criterion} if self.weight_criterion else {}),
            **({"steps": self.steps} if self.steps else {}),
            **({"search": self.search} if self.search else {}),
            **({"fold_batchnorm": self.fold_batchnorm} if self.fold_batchnorm is not None else {}),
            **({"export": self.export} if self.export else {}),
            "report_path": self.report_path,
            "pipeline": self.pipeline,
            "gates": [g.to_dict() for g in self.gates],
        }


@dataclass(frozen=True)
class PlanReport(_Verdicts):
    """The report of a dry run (``kind="plan"``): the structural plan, nothing written."""

    header: Header
    input: dict
    options: dict
    structural: dict
    gates: tuple[GateResult, ...] = ()

    def to_dict(self) -> dict:
        return {**self.header.to_dict(), "input": self.input, "options": self.options, "structural": self.structural}


@dataclass(frozen=True)
class ModelReport(_Verdicts):
    """What ``prunectl report`` shows: a model's sparsity (``kind="model"``), or a saved report read back.

    Attributes:
        header: the header, or None for a saved report (``saved`` holds its own).
        model: the model file's path, format and size, or None for a saved report.
        layers, totals: the sparsity rows and totals.
        saved: a saved JSON report as read, or None.
        baseline: the before/after rows and the baseline's totals, or None.
        evaluation: the model (and baseline) evaluated on data, or None.
        gates: the gates' verdicts.
    """

    header: Header | None
    model: dict | None
    layers: list[dict]
    totals: dict
    saved: dict | None = None
    baseline: dict | None = None
    evaluation: Evaluation | None = None
    gates: tuple[GateResult, ...] = ()

    @classmethod
    def from_saved(cls, report: dict, **extra) -> ModelReport:
        """A report read back from JSON (see :func:`load_report`), with ``extra`` fields set."""
        block = report.get("evaluation")
        evaluation = Evaluation.from_dict(block) if isinstance(block, dict) else None
        return cls(None, None, report["layers"], report["totals"], saved=report, **{"evaluation": evaluation, **extra})

    @property
    def kind(self) -> str | None:
        return self.header.kind if self.header else (self.saved or {}).get("kind")

    @property
    def size_bytes(self) -> int | None:
        block = self.model or (self.saved or {}).get("output") or (self.saved or {}).get("model") or {}
        return block.get("size_bytes")

    def to_dict(self) -> dict:
        base = (
            dict(self.saved)
            if self.saved is not None
            else {
                **(self.header.to_dict() if self.header else {}),
                "model": self.model,
                "layers": self.layers,
                "totals": self.totals,
            }
        )
        if self.baseline is not None:
            base["baseline"] = self.baseline
        if self.evaluation is not None:
            base["evaluation"] = self.evaluation.to_dict()
        if self.gates:
            base["gates"] = [g.to_dict() for g in self.gates]
        return base


def model_report(model: ModelFile, all_weights: bool = False) -> ModelReport:
    """Report the sparsity of a saved model, reading every weight with h5py.

    Args:
        model: the open model file.
        all_weights: include rows for biases, normalization and other weights
            (a ``.keras`` file's named as in Keras where the layer table knows the
            layer's weights, else ``vars/<i>``).
    """
    counts = file_counts(model)
    # A .keras file stores weights by position; the layer table names those it knows (bias, gamma...).
    names = keras_weight_names(model)
    entries = [replace(e, weight=names.get(e.dataset, e.weight)) for e in counts.entries]
    zeros = {new.key: counts.zeros[old.key] for old, new in zip(counts.entries, entries)}
    return ModelReport(
        Header.now("model"),
        file_info(model.path, model.format),
        layer_rows(entries, zeros, all_weights=all_weights),
        totals(entries, zeros),
    )


def pattern_summary(results: dict) -> tuple[dict | None, list[str]]:
    """How many pruned tensors hold the run's sparsity pattern and which were left as they were, with a note.

    Returns:
        ``({"pattern", "tensors", "held", "left"}, notes)``, or ``(None, [])`` for a run without a pattern.
    """
    held = [r for r in results.values() if r.pattern]
    left = [r for r in results.values() if r.left]
    if not held and not left:
        return None, []
    label = held[0].pattern if held else None
    summary = {"pattern": label, "tensors": len(held) + len(left), "held": len(held), "left": len(left)}
    if not left:
        return summary, []
    more = f"; and {len(left) - 5} more" if len(left) > 5 else ""
    shown = "; ".join(f"{r.key} ({r.left})" for r in left[:5]) + more
    note = (
        f"{len(left)} of {len(held) + len(left)} selected weight tensors cannot hold the {label} pattern and were "
        f"left as they were: {shown}"
    )
    return summary, [note]


def prune_report(
    outcome: PruneOutcome,
    source: ModelFile,
    target: Path,
    options: dict,
    report_path: Path,
    pipeline: dict,
    gates: Iterable = (),
) -> PruneReport:
    """Build the report of one ``prune`` run from its :class:`PruneOutcome`, checking ``gates`` on it.

    Args:
        outcome: what the run produced.
        source: the input model file.
        target: the written model.
        options: the options as recorded (``PruneRequest.options()``).
        report_path: where the report is written.
        pipeline: the resolved pipeline (``PruneRequest.pipeline()`` and the recipe).
        gates: gate objects to check the report against.
    """
    counts = outcome.counts
    summary, notes = pattern_summary(outcome.results)
    fields: dict[str, Any] = dict(
        header=Header.now("prune"),
        input=file_info(source.path, source.format),
        output=file_info(target, "keras" if target.suffix.lower() == ".keras" else "h5"),
        options=options,
        engine=outcome.engine,
        seconds=round(outcome.seconds, 3),
        layers=layer_rows(counts.entries, counts.zeros, outcome.results),
        totals={**totals(counts.entries, counts.zeros), **({"pattern": summary} if summary else {})},
        notes=list(outcome.notes) + notes,
        report_path=str(report_path),
        pipeline=pipeline,
        structural=outcome.structural or None,
        benchmark=outcome.benchmark or None,
        evaluation=outcome.evaluation or None,
        finetune=outcome.finetune,
        weight_criterion=outcome.weight_criterion,
        steps=outcome.steps,
        search=outcome.search,
        fold_batchnorm=outcome.fold,
    )
    # A gate measures the report it is part of: judge the facts, then build the report once with the verdicts.
    facts = PruneReport(**fields)
    return PruneReport(**fields, gates=tuple(gate.check(facts) for gate in gates))


def plan_report(source: ModelFile, options: dict, plan) -> PlanReport:
    """Build the report of a dry run: the structural plan, nothing written."""
    return PlanReport(Header.now("plan"), file_info(source.path, source.format), options, plan.to_dict())


def load_report(text: str, source: str) -> dict:
    """Parse and check a JSON report.

    Raises:
        ReportError: not JSON, or not a prunectl report of a known schema.
    """
    try:
        report = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(
            f"report is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}). Received: {source!r}"
        ) from None
    if not isinstance(report, dict) or "schema_version" not in report:
        raise ReportError(f"JSON file is not a prunectl report (no schema_version). Received: {source!r}")
    if report["schema_version"] != SCHEMA_VERSION:
        raise ReportError(
            f"unsupported report schema_version (this prunectl reads {SCHEMA_VERSION}). "
            f"Received: schema_version={report['schema_version']!r}"
        )
    missing = [key for key in ("layers", "totals") if not isinstance(report.get(key), (list, dict))]
    missing += [f"totals.{k}" for k in ("prunable", "all") if "totals" not in missing and k not in report["totals"]]
    if missing:
        raise ReportError(f"JSON file is not a prunectl report (missing {', '.join(missing)}). Received: {source!r}")
    return report


def _shape(row: dict | None) -> str | None:
    return None if row is None else "x".join(map(str, row["shape"]))


def compare_rows(baseline: dict, current: dict) -> list[dict]:
    """Join two reports' rows by layer and weight for a before/after view.

    Each row has the weight's count and shape before and after, and ``change``: None
    where the shape is the same, ``"<shape> -> <shape>"`` where units were removed,
    ``"added"`` or ``"removed"`` for a weight only one side holds (rows of weights the
    baseline alone holds come last, with ``count`` 0; an unprunable one only where
    ``current`` lists unprunable weights, as ``--all-weights`` does).
    """
    before = {(r["layer"], r["weight"]): r for r in baseline["layers"]}
    after = {(r["layer"], r["weight"]) for r in current["layers"]}
    rows = [_compared(r, before.get((r["layer"], r["weight"])), r) for r in current["layers"]]
    # A report made without --all-weights lists prunable weights only: the others are not missing from it.
    listed = any(not r.get("prunable", True) for r in current["layers"])
    rows += [
        _compared(old, old, None)
        for key, old in before.items()
        if key not in after and (listed or old.get("prunable", True))
    ]
    return rows


def _compared(row: dict, old: dict | None, new: dict | None) -> dict:
    """``row`` (the side that names the weight) compared: ``old`` before, ``new`` after (either may be None)."""
    shapes = (_shape(old), _shape(new))
    change: str | None
    if old is None or new is None:
        change = "added" if old is None else "removed"
    else:
        change = None if shapes[0] == shapes[1] else f"{shapes[0]} -> {shapes[1]}"
    return {
        "layer": row["layer"],
        "class": row["class"],
        "weight": row["weight"],
        "count": new["count"] if new else 0,
        "count_before": old["count"] if old else None,
        "shape_before": old["shape"] if old else None,
        "shape_after": new["shape"] if new else None,
        "change": change,
        "sparsity_before": old["sparsity"] if old else None,
        "sparsity_after": new["sparsity"] if new else None,
    }


def _flops(report: dict) -> dict | None:
    """A saved prune report's multiply-adds before and after its structural step, or None."""
    flops = ((report.get("structural") or {}).get("totals") or {}).get("flops")
    return {"before": flops["before"], "after": flops["after"]} if isinstance(flops, dict) else None


def baseline_block(source: str, baseline: dict, current: dict) -> dict:
    """The ``baseline`` block of a report compared with ``baseline``: rows, totals, params and FLOPs.

    ``params`` counts every weight (``totals.all``) of the baseline and of the current
    model. ``flops`` (multiply-adds) is there only where the current side is a saved
    prune report whose structural plan measured them: a model file alone does not
    give the layers' output sizes they depend on.

    Args:
        source: the baseline as named on the command line.
        baseline: the baseline's report as a dict.
        current: the current report as a dict.

    Returns:
        ``{"source", "layers", "totals", "params"[, "flops"]}``; ``params`` and ``flops``
        are ``{"before", "after"}``.
    """
    block = {
        "source": source,
        "layers": compare_rows(baseline, current),
        "totals": baseline["totals"],
        "params": {"before": baseline["totals"]["all"]["count"], "after": current["totals"]["all"]["count"]},
    }
    flops = _flops(current)
    if flops is not None:
        block["flops"] = flops
    return block


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2) + "\n"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
