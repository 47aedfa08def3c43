"""Structural sensitivity: how much the model loses when one group of coupled units alone loses a fraction.

For each prunable group of the channel graph (coupled producers, or the heads of one
attention layer) and each tested ratio, a plan removes that fraction of the group's units
(``NeuronPruning(ratio=0, layers=((pattern, r),))``, so only that group is cut), the plan is
applied to a copy (:func:`~prunectl.core.structure.plan.apply_plan` never changes the model),
and the rebuilt model is evaluated. With a budget, each group's largest ratio within it is
picked, the picks are applied together as one plan and backed off
(:func:`~prunectl.core.run.backoff.back_off`) until the combined drop holds too.
"""

from __future__ import annotations

import gc
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from prunectl.core.errors import OptionError
from prunectl.core.options import DEFAULT_MIN_KEEP, validate_budget, validate_neuron_ratio
from prunectl.core.run.backoff import Option, back_off, metric_drop
from prunectl.core.run.report import Header
from prunectl.core.structure.graph import build_graph
from prunectl.core.structure.plan import NeuronPruning, StructuralPlan, apply_plan, group_names, plan_structure
from prunectl.core.training.evaluation import accuracy_key

#: ``progress(done, total, group_label, ratio)`` after every trial (``done`` 0 once before the first).
Progress = Callable[[int, int, str, float], None]


def group_pattern(names: Sequence[str]) -> str:
    """The override pattern naming one group: its first layer, anchored (``^conv1$``)."""
    return f"^{re.escape(names[0])}$"


def _removes_nothing(plan: StructuralPlan) -> bool:
    return all(g.units_after == g.units_before for g in plan.groups)


def structural_trials(
    model,
    evaluate: Callable[[object], dict],
    base: NeuronPruning,
    ratios: Sequence[float],
    x: np.ndarray | None = None,
    progress: Progress | None = None,
    dense: dict | None = None,
) -> list[dict]:
    """Cut each prunable group of ``model`` alone to each ratio, evaluate the rebuilt model, and record the drop.

    ``model`` is never changed: each trial's plan is applied to a rebuilt copy.

    Args:
        model: a built Keras model (Sequential or Functional).
        evaluate: returns a model's loss and metrics by name (an
            :class:`~prunectl.core.training.evaluate.Evaluator`); the metric is accuracy where the
            values have one, else the loss.
        base: the step whose criterion, ``round_to``, ``min_keep``, ``include``/``exclude``, ``norms``
            and ``prune_residual`` every trial uses (its ``ratio``/``threshold``/``layers`` are ignored).
        ratios: the fractions of each group's units to remove, each in (0, 1).
        x: calibration inputs (activation criteria need them).
        progress: called after every trial.
        dense: ``evaluate(model)`` if already measured (else measured here).

    Returns:
        One row per prunable group, in graph order: ``{"group" (its id), "layers" (its layer names),
        "pattern" (the override naming it, see :func:`group_pattern`), "units" (before), "trials"}``;
        each trial ``{"ratio", "units_after", "metric", "drop", "params_after", "flops_after", "values",
        "evaluated"}``. A trial whose plan removes nothing (the ``round_to``/``min_keep`` floors) is
        not evaluated: its metric is the dense one, drop 0.0, ``evaluated`` False. A trial that keeps
        as many units as an earlier ratio of the same group reuses that trial's values
        (``evaluated`` False).

    Raises:
        OptionError: a ratio outside (0, 1), or an activation criterion without ``x``.
        SelectionError: no prunable group.
    """
    ratios = tuple(sorted({validate_neuron_ratio(r) for r in ratios}))
    if not ratios:
        raise OptionError("give at least one neuron ratio to test. Received: ratios=()")
    dense = dense if dense is not None else evaluate(model)
    metric = accuracy_key(dense) or "loss"
    graph = build_graph(model, base.include, base.exclude, base.norms or "boundary", base.prune_residual)
    names = group_names(graph)
    sizes = {g.id: g.size for g in graph.groups}
    total, done = len(names) * len(ratios), 0
    if progress is not None:
        progress(done, total, "", 0.0)
    rows = []
    for gid, layers in names.items():
        pattern = group_pattern(layers)
        trials: list[dict] = []
        seen: dict[int, dict] = {}
        for ratio in ratios:
            plan = plan_structure(model, _step(base, {pattern: ratio}), x)
            totals = plan.totals()
            after = next(g.units_after for g in plan.groups if g.id == gid)
            trial = {
                "ratio": ratio,
                "units_after": after,
                "params_after": totals["params"]["after"],
                "flops_after": totals["flops"]["after"],
            }
            if _removes_nothing(plan):
                trial.update(metric=dense[metric], drop=0.0, values=dense, evaluated=False)
            elif after in seen:  # round_to gave the same cut as a smaller ratio: same plan, same result
                trial.update({k: seen[after][k] for k in ("metric", "drop", "values")}, evaluated=False)
            else:
                values = _evaluate_plan(model, plan, evaluate, base)
                drop = metric_drop(metric, dense[metric], values[metric])
                trial.update(metric=values[metric], drop=drop, values=values)
                trial["evaluated"] = True
                seen[after] = trial
            trials.append(trial)
            done += 1
            if progress is not None:
                progress(done, total, ", ".join(layers), ratio)
        rows.append({"group": gid, "layers": layers, "pattern": pattern, "units": sizes[gid], "trials": trials})
    return rows


def _step(base: NeuronPruning, overrides: dict[str, float]) -> NeuronPruning:
    return replace(base, ratio=0.0, threshold=None, scope="layer", layers=tuple(overrides.items()))


def _evaluate_plan(model, plan: StructuralPlan, evaluate, base: NeuronPruning) -> dict:
    pruned = apply_plan(model, plan)
    try:
        return evaluate(pruned)
    finally:
        del pruned
        gc.collect()


def _removed(model_params: int, trial: dict) -> float:
    return model_params - trial["params_after"]


def structural_choice(
    model,
    evaluate: Callable[[object], dict],
    base: NeuronPruning,
    rows: list[dict],
    dense: dict,
    budget: float,
    x: np.ndarray | None = None,
    on_check: Callable[[], None] | None = None,
) -> dict:
    """Each group's largest tested ratio within ``budget`` alone, then backed off until the groups cut together hold it.

    The combined check applies every pick as one plan (``ratio`` 0 with one override per group);
    the most fragile pick (largest own drop per parameter removed, see
    :func:`~prunectl.core.run.backoff.fragility`) goes back one notch at a time.

    Args:
        model: the model the rows were measured on (never changed).
        evaluate: as :func:`structural_trials`.
        base: as :func:`structural_trials`.
        rows: what :func:`structural_trials` returned.
        dense: the dense model's values.
        budget: the largest drop allowed, per group alone and for all together.
        x: calibration inputs.
        on_check: called after each combined check.

    Returns:
        ``{"limit", "groups": {pattern: ratio}, "left_whole": [pattern, ...], "per_group" (the picks
        alone), "combined_drop", "fits", "checks" (as :func:`~prunectl.core.run.sensitivity.combined_choice`,
        with ``backed_off.group``), "params_after", "flops_after"}`` (the last two of the final choice).

    Raises:
        OptionError: a negative budget.
    """
    validate_budget(budget)
    metric = accuracy_key(dense) or "loss"
    before = plan_structure(model, _step(base, {rows[0]["pattern"]: 0.0}), x).totals() if rows else None
    params = before["params"]["before"] if before else 0
    picks: dict[str, float] = {}
    options: dict[str, list[Option]] = {}
    for row in rows:
        useful = [t for t in row["trials"] if t["units_after"] < row["units"]]
        options[row["pattern"]] = [Option(t["ratio"], t["drop"], _removed(params, t)) for t in useful]
        fitting = [t["ratio"] for t in useful if t["drop"] <= budget]
        if fitting:
            picks[row["pattern"]] = max(fitting)
    last: dict = {}

    def combined(choice: dict[str, float]) -> float:
        plan = plan_structure(model, _step(base, choice), x)
        values = _evaluate_plan(model, plan, evaluate, base)
        last[tuple(sorted(choice.items()))] = plan.totals()
        if on_check is not None:
            on_check()
        return metric_drop(metric, dense[metric], values[metric])

    found = back_off(picks, options, combined, budget)
    checks = []
    for check in found.checks:
        entry = {"choice": check["choice"], "drop": check["drop"]}
        if "backed_off" in check:
            step = check["backed_off"]
            entry["backed_off"] = {"group": step["key"], **{k: step[k] for k in ("from", "to", "reason")}}
        checks.append(entry)
    totals = last.get(tuple(sorted(found.choice.items()))) if found.choice else before
    return {
        "limit": budget,
        "groups": found.choice,
        "left_whole": [row["pattern"] for row in rows if row["pattern"] not in found.choice],
        "per_group": picks,
        "combined_drop": found.drop,
        "fits": found.fits or not picks,
        "checks": checks,
        "params_after": totals["params"]["after"] if totals else None,
        "flops_after": totals["flops"]["after"] if totals else None,
    }


def recipe_step(base: NeuronPruning, choice: dict) -> dict:
    """The structural recipe step of a budget's choice: ``neuron-ratio = 0`` with one override per chosen group."""
    step: dict = {"neuron-criterion": base.criterion, "neuron-ratio": 0.0}
    if base.round_to != 1:
        step["round-to"] = base.round_to
    if base.min_keep != DEFAULT_MIN_KEEP:
        step["min-keep"] = base.min_keep
    if base.norms and base.norms != "boundary":
        step["norms"] = base.norms
    if base.prune_residual:
        step["prune-residual"] = True
    step["layers"] = {pattern: {"neuron-ratio": ratio} for pattern, ratio in choice["groups"].items()}
    return step


@dataclass(frozen=True)
class StructuralSensitivityReport:
    """The results of a structural sensitivity run (``kind="sensitivity"``, ``mode="structural"``).

    Attributes:
        header: the report header.
        evaluation: the data and compile settings.
        metric: ``{"name", "higher_is_better", "dense"}``.
        dense: the dense model's values.
        ratios: the tested ratios.
        neurons: the base step's settings (criterion, round_to, min_keep, ...).
        params: the dense model's params and FLOPs ``{"params", "flops"}``.
        groups: the rows of :func:`structural_trials`.
        seconds: how long the analysis took.
        budget: the choice of :func:`structural_choice`, or None.
        model: the model file's path, format and size, or None.
        recipe_path: where the recipe was written, or None.
    """

    header: Header
    evaluation: dict
    metric: dict
    dense: dict
    ratios: list
    neurons: dict
    params: dict
    groups: list
    seconds: float
    budget: dict | None = None
    model: dict | None = None
    recipe_path: str | None = None

    return_code = 0

    def to_dict(self) -> dict:
        return {
            **self.header.to_dict(),
            "mode": "structural",
            "evaluation": self.evaluation,
            "metric": self.metric,
            "dense": self.dense,
            "ratios": self.ratios,
            "neurons": self.neurons,
            "dense_cost": self.params,
            "groups": self.groups,
            **({"budget": self.budget} if self.budget is not None else {}),
            "seconds": self.seconds,
            **({"model": self.model} if self.model is not None else {}),
            **({"recipe_path": self.recipe_path} if self.recipe_path is not None else {}),
        }

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), indent=2) + "\n"


def analyze_structure(
    loaded,
    evaluation,
    base: NeuronPruning,
    ratios: Sequence[float],
    budget: float | None = None,
    progress: Progress | None = None,
    model_info: dict | None = None,
    recipe_path: Path | None = None,
) -> StructuralSensitivityReport:
    """Run :func:`structural_trials` (and :func:`structural_choice` with a budget) on a loaded model.

    Args:
        loaded: the model as loaded by :func:`~prunectl.core.io.keras_io.load_model` (never changed).
        evaluation: the :class:`~prunectl.core.training.evaluate.EvalOptions`.
        base: the structural settings every trial uses.
        ratios: the tested ratios.
        budget: the largest drop allowed, or None to choose nothing.
        progress: called after every trial and combined check (``progress(total, total, "(together)", 0.0)``).
        model_info: recorded in the report.
        recipe_path: recorded in the report.

    Raises:
        DataError, OptionError, SelectionError, StructureError: as the functions it calls.
    """
    from prunectl.core.structure.criteria import CRITERIA
    from prunectl.core.training.data import calibration_inputs
    from prunectl.core.training.evaluate import Evaluator

    start = time.perf_counter()
    model = loaded.model
    evaluate = Evaluator(loaded, evaluation)
    x = calibration_inputs(evaluation.data, model) if CRITERIA.get(base.criterion).needs_data else None
    dense = evaluate(model)
    metric = accuracy_key(dense) or "loss"
    rows = structural_trials(model, evaluate, base, ratios, x, progress, dense)
    choice = None
    if budget is not None:
        total = sum(len(r["trials"]) for r in rows)
        tick = (lambda: progress(total, total, "(together)", 0.0)) if progress is not None else None
        choice = structural_choice(model, evaluate, base, rows, dense, budget, x, tick)
    cost = plan_structure(model, _step(base, {rows[0]["pattern"]: 0.0}), x).totals() if rows else None
    return StructuralSensitivityReport(
        Header.now("sensitivity"),
        evaluate.describe(),
        {"name": metric, "higher_is_better": metric != "loss", "dense": dense[metric]},
        dense,
        sorted(set(ratios)),
        {k: v for k, v in base.get_config().items() if k not in ("neuron_ratio", "neuron_threshold", "layers")},
        {"params": cost["params"]["before"], "flops": cost["flops"]["before"]} if cost else {},
        rows,
        round(time.perf_counter() - start, 3),
        choice,
        model_info,
        None if recipe_path is None else str(recipe_path),
    )
