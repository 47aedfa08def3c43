"""Sparsity reports: plain dicts with a ``schema_version``, written as JSON.

A report's ``layers`` holds one row per prunable weight tensor; ``totals``
counts zeros over the prunable weights and over every weight of the model.
Sparsity is always zeros divided by weight count.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Iterable

from prunectl import __version__
from prunectl.core.errors import ReportError
from prunectl.core.io.modelfile import ModelFile, WeightEntry
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


def layer_rows(entries: Iterable[WeightEntry], zeros: dict[str, int], results: dict | None = None,
               all_weights: bool = False) -> list[dict]:
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
            row["pruned"] = result is not None
            row["threshold"] = result.threshold if result else None
            row["zeros_before"] = result.zeros_before if result else zeros[entry.key]
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


def model_report(model: ModelFile, all_weights: bool = False) -> dict:
    """Report the sparsity of a saved model, reading every weight with h5py.

    Args:
        model: the open model file.
        all_weights: include rows for biases, normalization and other weights.
    """
    counts = file_counts(model)
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "model",
        "created": _now(),
        "tool": tool_versions(),
        "model": file_info(model.path, model.format),
        "layers": layer_rows(counts.entries, counts.zeros, all_weights=all_weights),
        "totals": totals(counts.entries, counts.zeros),
    }


def prune_report(outcome, source: ModelFile, target: Path, options: dict) -> dict:
    """Build the report of one ``prune`` run from its :class:`PruneOutcome`."""
    counts = outcome.counts
    report = {
        "schema_version": SCHEMA_VERSION,
        "kind": "prune",
        "created": _now(),
        "tool": tool_versions(),
        "input": file_info(source.path, source.format),
        "output": file_info(target, "keras" if target.suffix.lower() == ".keras" else "h5"),
        "options": options,
        "engine": outcome.engine,
        "seconds": round(outcome.seconds, 3),
        "layers": layer_rows(counts.entries, counts.zeros, outcome.results),
        "totals": totals(counts.entries, counts.zeros),
        "notes": list(outcome.notes),
        **({"structural": outcome.structural} if outcome.structural else {}),
        **({"benchmark": outcome.benchmark} if outcome.benchmark else {}),
        **({"evaluation": outcome.evaluation} if outcome.evaluation else {}),
    }
    report["size_ratio"] = report["output"]["size_bytes"] / max(1, report["input"]["size_bytes"])
    if outcome.finetune is not None:
        report["finetune"] = outcome.finetune
    return report


def plan_report(source: ModelFile, options: dict, plan) -> dict:
    """Build the report of a dry run: the structural plan, nothing written."""
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "plan",
        "created": _now(),
        "tool": tool_versions(),
        "input": file_info(source.path, source.format),
        "options": options,
        "structural": plan.to_dict(),
    }


def load_report(text: str, source: str) -> dict:
    """Parse and check a JSON report.

    Raises:
        ReportError: not JSON, or not a prunectl report of a known schema.
    """
    try:
        report = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(f"report is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}). "
                          f"Received: {source!r}") from None
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


def compare_rows(baseline: dict, current: dict) -> list[dict]:
    """Join two reports' rows by layer and weight for a before/after view."""
    before = {(r["layer"], r["weight"]): r for r in baseline["layers"]}
    rows = []
    for row in current["layers"]:
        old = before.get((row["layer"], row["weight"]))
        rows.append({
            "layer": row["layer"], "class": row["class"], "weight": row["weight"], "count": row["count"],
            "sparsity_before": old["sparsity"] if old else None, "sparsity_after": row["sparsity"],
        })
    return rows


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2) + "\n"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
