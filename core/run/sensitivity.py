"""Per-layer sensitivity: how much the model loses when one layer alone is pruned one-shot.

For each selected layer and each tested sparsity, the layer's prunable weights
are pruned by magnitude (each tensor to that sparsity, as ``prune --sparsity``
does), the model is evaluated on validation data, and the layer's weights are
put back from a copy. The model is loaded once and only the layer under test is
ever changed, so a run costs one load plus one evaluation per trial.

The measured metric is accuracy where the model has an accuracy metric, else
the loss; a trial's *drop* is how much worse it is than the dense model
(accuracy lost, or loss gained), so a larger drop always means a more fragile
layer. From the drops, :func:`choose_sparsities` picks for each layer the
largest tested sparsity whose drop stays within a budget; :func:`analyze` then
prunes all the picks together, measures the combined drop, and backs off the
most fragile pick until the combined drop is within the budget too
(:func:`~prunectl.core.run.backoff.back_off`); :func:`recipe_toml` writes the
result as a recipe that ``prune --recipe`` reads.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prunectl.core.errors import OptionError
from prunectl.core.io import keras_io
from prunectl.core.io.atomic import check_output, write_text_atomic
from prunectl.core.io.modelfile import open_model_file
from prunectl.core.options import DEFAULT_SPARSITIES, validate_budget, validate_neuron_ratio, validate_sparsity
from prunectl.core.run.backoff import Option, back_off, metric_drop
from prunectl.core.run.recipe import toml_text
from prunectl.core.run.report import Header, file_info
from prunectl.core.run.structural_sensitivity import StructuralSensitivityReport
from prunectl.core.structure.plan import NeuronPruning
from prunectl.core.training.evaluate import EvalOptions, Evaluator, accuracy_key
from prunectl.core.weights import masks
from prunectl.core.weights.catalog import keras_weight_entries
from prunectl.core.weights.prune import WeightPruning, prune_keras_model
from prunectl.core.weights.selection import select_weights

#: Called once before the first trial (``done`` 0, once the dense model is measured), after every
#: trial as ``progress(done, total, layer, sparsity)``, and after each combined check of a budget's
#: choice as ``progress(total, total, COMBINED, 0.0)``.
Progress = Callable[[int, int, str, float], None]

#: The layer name progress reports for a combined check (no layer is named so: it has brackets).
COMBINED = "(together)"


@dataclass(frozen=True)
class SensitivityOptions:
    """What a sensitivity run tests.

    Attributes:
        evaluation: the validation data and how to evaluate on it.
        sparsities: the sparsities each layer is pruned to, in [0, 1).
        include: layer-name patterns to test (default: every prunable layer).
        exclude: layer-name patterns to leave out.
        budget: the largest drop the choice may cost, per layer alone and all together, or None to choose none.
        neuron_ratios: with any, test units instead of weights: each prunable group of coupled units
            loses each of these fractions of its units (see
            :func:`~prunectl.core.run.structural_sensitivity.structural_trials`).
        neurons: the structural settings of those trials (criterion, ``round_to``, ``min_keep``);
            default ``NeuronPruning`` with the ``include``/``exclude`` patterns.

    Raises:
        OptionError: no sparsity, a sparsity outside [0, 1), a neuron ratio outside (0, 1), or a negative budget.
    """

    evaluation: EvalOptions | None
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    budget: float | None = None
    neuron_ratios: tuple[float, ...] = ()
    neurons: NeuronPruning | None = None

    def __post_init__(self):
        if self.evaluation is None:
            raise OptionError(
                "sensitivity measures each trial on validation data; add {data} FILE. Received: no {data}", "data"
            )
        if not self.sparsities:
            raise OptionError("give at least one sparsity to test. Received: sparsities=()")
        object.__setattr__(self, "sparsities", tuple(sorted({validate_sparsity(s) for s in self.sparsities})))
        if self.budget is not None:
            validate_budget(self.budget)
        ratios = tuple(sorted({validate_neuron_ratio(r) for r in self.neuron_ratios}))
        object.__setattr__(self, "neuron_ratios", ratios)
        if ratios and self.neurons is None:
            object.__setattr__(self, "neurons", NeuronPruning(ratio=0.5, include=self.include, exclude=self.exclude))

    def get_config(self) -> dict:
        return {
            "evaluation": self.evaluation.get_config() if self.evaluation else None,
            "sparsities": list(self.sparsities),
            "include": list(self.include),
            "exclude": list(self.exclude),
            "budget": self.budget,
            "neuron_ratios": list(self.neuron_ratios),
            "neurons": self.neurons.get_config() if self.neurons else None,
        }

    @classmethod
    def from_config(cls, config: dict) -> SensitivityOptions:
        """The options :meth:`get_config` describes."""
        return cls(
            EvalOptions.from_config(config["evaluation"]),
            tuple(config["sparsities"]),
            tuple(config["include"]),
            tuple(config["exclude"]),
            config["budget"],
            tuple(config.get("neuron_ratios", ())),
            NeuronPruning.from_config(config["neurons"]) if config.get("neurons") else None,
        )


@dataclass(frozen=True)
class SensitivityReport:
    """The results of a sensitivity run (``kind="sensitivity"``).

    Attributes:
        header: the report header.
        evaluation: the data and compile settings.
        metric: ``{"name", "higher_is_better", "dense"}``: what a drop is measured in.
        dense: the dense model's values.
        sparsities: the tested sparsities.
        prunable_count: the model's prunable weights.
        layers: one row per layer with its ``trials``.
        seconds: how long the analysis took.
        budget: the budget's choice (see :func:`choose_sparsities`), or None.
        model: the model file's path, format and size, or None.
        recipe_path: where the budget's recipe was written, or None.
    """

    header: Header
    evaluation: dict
    metric: dict
    dense: dict
    sparsities: list
    prunable_count: int
    layers: list
    seconds: float
    budget: dict | None = None
    model: dict | None = None
    recipe_path: str | None = None

    return_code = 0

    def to_dict(self) -> dict:
        return {
            **self.header.to_dict(),
            "evaluation": self.evaluation,
            "metric": self.metric,
            "dense": self.dense,
            "sparsities": self.sparsities,
            "prunable_count": self.prunable_count,
            "layers": self.layers,
            **({"budget": self.budget} if self.budget is not None else {}),
            "seconds": self.seconds,
            **({"model": self.model} if self.model is not None else {}),
            **({"recipe_path": self.recipe_path} if self.recipe_path is not None else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


@dataclass
class _Layer:
    name: str
    class_name: str
    entries: list = field(default_factory=list)


def analyze(
    loaded: keras_io.LoadedModel,
    options: SensitivityOptions,
    progress: Progress | None = None,
    model_info: dict | None = None,
    recipe_path: Path | None = None,
) -> SensitivityReport:
    """Prune each selected layer of a live model alone to each sparsity, evaluate, and restore it.

    The model's weights are the same afterwards as before, also when an error
    interrupts a trial.

    Args:
        loaded: the model as loaded by :func:`keras_io.load_model`.
        options: what to test.
        progress: called after every trial.
        model_info: the model file's path, format and size, recorded in the report.
        recipe_path: where the budget's recipe will be written, recorded in the report.

    Returns:
        The :class:`SensitivityReport` (``metric``, ``dense``, one ``layers`` row per
        layer with its ``trials``, and ``budget`` when asked).

    Raises:
        DataError: unreadable data, or data that does not fit the model.
        OptionError: an unknown loss or metric, or one that cannot be inferred.
        SelectionError: a pattern that selects no prunable layer.
    """
    start = time.perf_counter()
    model = loaded.model
    if options.evaluation is None:  # SensitivityOptions refuses this; a caller may bypass it with replace()
        raise OptionError("sensitivity needs evaluation options. Received: evaluation=None")
    evaluate = Evaluator(loaded, options.evaluation)
    pairs = keras_weight_entries(model)
    entries = [e for e, _ in pairs]
    variables = {e.key: v for e, v in pairs}
    layers: dict[str, _Layer] = {}
    for entry in select_weights(entries, options.include, options.exclude):
        layers.setdefault(entry.layer, _Layer(entry.layer, entry.class_name)).entries.append(entry)

    dense = evaluate(model)
    metric = accuracy_key(dense) or "loss"
    total, done = len(layers) * len(options.sparsities), 0
    if progress is not None:  # the dense model is loaded and measured: the trials begin
        progress(done, total, "", 0.0)
    rows = []
    # Every selected layer's weights, kept once: the trials and the combined checks put them back from here.
    kept = {e.key: np.array(variables[e.key].numpy(), copy=True) for layer in layers.values() for e in layer.entries}

    def restore(keys) -> None:
        for key in keys:
            variables[key].assign(kept[key])

    for layer in layers.values():
        trials = []
        alone = (f"^{re.escape(layer.name)}$",)
        for sparsity in options.sparsities:
            try:
                prune_keras_model(model, WeightPruning(sparsity=sparsity, include=alone))
                values = evaluate(model)
            finally:
                restore(e.key for e in layer.entries)
            trials.append(
                {
                    "sparsity": sparsity,
                    "metric": values[metric],
                    "drop": metric_drop(metric, dense[metric], values[metric]),
                    "values": values,
                }
            )
            done += 1
            if progress is not None:
                progress(done, total, layer.name, sparsity)
        rows.append(
            {
                "layer": layer.name,
                "class": layer.class_name,
                "weights": [e.weight for e in layer.entries],
                "count": sum(e.size for e in layer.entries),
                "trials": trials,
            }
        )
    metric_block = {"name": metric, "higher_is_better": metric != "loss", "dense": dense[metric]}
    prunable = sum(e.size for e in entries if e.prunable)
    budget = None
    if options.budget is not None:

        def combined(choice: dict[str, float]) -> float:
            try:
                prune_keras_model(model, WeightPruning(sparsity=0.0, layers=_overrides(choice)))
                values = evaluate(model)
            finally:
                restore(kept)
            if progress is not None:
                progress(done, total, COMBINED, 0.0)
            return metric_drop(metric, dense[metric], values[metric])

        budget = combined_choice({"layers": rows, "prunable_count": prunable}, options.budget, combined)
    return SensitivityReport(
        Header.now("sensitivity"),
        evaluate.describe(),
        metric_block,
        dense,
        list(options.sparsities),
        prunable,
        rows,
        round(time.perf_counter() - start, 3),
        budget,
        model_info,
        None if recipe_path is None else str(recipe_path),
    )


def choose_sparsities(result: dict, budget: float) -> dict:
    """For each layer, the largest tested sparsity whose one-shot drop is at most ``budget``.

    Layers whose drops all exceed the budget are left dense. Each layer's drop is
    measured with every other layer dense; pruning several layers at once can
    cost more than any one of them.

    Args:
        result: what :func:`analyze` returned.
        budget: the largest drop allowed per layer (accuracy, or loss, as ``result["metric"]`` says).

    Returns:
        ``{"limit", "layers": {layer: sparsity}, "left_dense": [layer, ...], "sparsity"}``, where
        ``sparsity`` is the fraction of the model's prunable weights the choice zeroes.

    Raises:
        OptionError: a negative or non-finite budget.
    """
    validate_budget(budget)
    chosen, left = {}, []
    for row in result["layers"]:
        fitting = [t["sparsity"] for t in row["trials"] if t["drop"] <= budget]
        if fitting and max(fitting) > 0:
            chosen[row["layer"]] = max(fitting)
        else:
            left.append(row["layer"])
    return {"limit": budget, "layers": chosen, "left_dense": left, "sparsity": _zeroed(result, chosen)}


def _overrides(choice: dict[str, float]) -> tuple:
    return tuple((f"^{re.escape(layer)}$", None, sparsity) for layer, sparsity in choice.items())


def _zeroed(result: dict, layers: dict[str, float]) -> float:
    # Weights per tensor are zeroed as prune does: ceil(s * n) of each tensor.
    counts = {row["layer"]: row["count"] for row in result["layers"]}
    zeros = sum(masks.zeros_for(s, counts[layer]) for layer, s in layers.items())
    return zeros / result["prunable_count"] if result["prunable_count"] else 0.0


def combined_choice(result: dict, budget: float, combined_drop: Callable[[dict[str, float]], float]) -> dict:
    """The per-layer picks of :func:`choose_sparsities`, backed off until, pruned together, they hold ``budget``.

    The picks are measured together through ``combined_drop`` and backed off by
    :func:`~prunectl.core.run.backoff.back_off`, one notch of the most fragile layer at a
    time: the one with the largest own drop per weight zeroed at its pick.

    Args:
        result: what :func:`analyze` measured (``layers`` with their ``trials``, ``prunable_count``).
        budget: the largest drop allowed, per layer alone and for the choice as a whole.
        combined_drop: prunes the layers of a choice ``{layer: sparsity}`` together, measures the
            drop, and restores the model.

    Returns:
        :func:`choose_sparsities`'s block (for the final choice) with ``per_layer`` (the picks
        before the combined check), ``combined_drop`` (of the final choice; 0.0 when nothing is
        left to prune), ``fits`` (False when no non-empty choice holds the budget) and ``checks``
        (each ``{"choice", "drop"}`` measured, with ``backed_off`` ``{"layer", "from", "to", "reason"}``
        where it was over the budget).
    """
    picks = choose_sparsities(result, budget)
    options = {
        row["layer"]: [
            Option(t["sparsity"], t["drop"], masks.zeros_for(t["sparsity"], row["count"]))
            for t in row["trials"]
            if t["sparsity"] > 0 and masks.zeros_for(t["sparsity"], row["count"]) > 0
        ]
        for row in result["layers"]
    }
    found = back_off(picks["layers"], options, combined_drop, budget)
    checks = []
    for check in found.checks:
        entry = {"choice": check["choice"], "drop": check["drop"]}
        if "backed_off" in check:
            step = check["backed_off"]
            entry["backed_off"] = {"layer": step["key"], **{k: step[k] for k in ("from", "to", "reason")}}
        checks.append(entry)
    order = [row["layer"] for row in result["layers"]]
    return {
        "limit": budget,
        "layers": found.choice,
        "left_dense": [layer for layer in order if layer not in found.choice],
        "sparsity": _zeroed(result, found.choice),
        "per_layer": picks["layers"],
        "combined_drop": found.drop,
        "fits": found.fits or not picks["layers"],
        "checks": checks,
    }


def recipe_document(choice: dict) -> dict:
    """The recipe of a budget choice: one weight step, dense by default, with one override per chosen layer."""
    overrides = {f"^{re.escape(layer)}$": {"sparsity": sparsity} for layer, sparsity in choice["layers"].items()}
    return {"step": [{"sparsity": 0.0, **({"layers": overrides} if overrides else {})}]}


def recipe_toml(result: dict) -> str:
    """The TOML recipe of ``result["budget"]`` (a :class:`SensitivityReport` as a dict), with comments saying
    how it was made.

    Raises:
        OptionError: the result holds no budget choice.
    """
    choice = result.get("budget")
    if choice is None:
        raise OptionError("a recipe needs a budget choice; run with a budget. Received: budget=None")
    metric = result["metric"]["name"]
    if result.get("mode") == "structural":
        return _structural_recipe(result, choice, metric)
    sparsities = ",".join(f"{s:g}" for s in result["sparsities"])
    comments = [
        f"written by prunectl sensitivity {result['model']['path']} --data {result['evaluation']['data']} "
        f"--sparsities {sparsities} --budget {choice['limit']:g}",
        *budget_lines(choice, metric),
        f"zeroes {100 * choice['sparsity']:.1f}% of the prunable weights",
    ]
    if choice["left_dense"]:
        comments.append(f"left dense: {', '.join(choice['left_dense'])}")
    return toml_text(recipe_document(choice), tuple(comments))


def _structural_recipe(result: dict, choice: dict, metric: str) -> str:
    from prunectl.core.run.structural_sensitivity import recipe_step

    neurons = NeuronPruning.from_config({**result["neurons"], "neuron_ratio": 0.5})
    ratios = ",".join(f"{r:g}" for r in result["ratios"])
    lines = [
        f"written by prunectl sensitivity {result['model']['path']} --data {result['evaluation']['data']} "
        f"--neuron-ratios {ratios} --budget {choice['limit']:g}",
        *(
            line.replace("layer", "group of units").replace("->dense", "->whole").replace("left dense", "left whole")
            for line in budget_lines(choice, metric)
        ),
    ]
    if choice.get("params_after") is not None and result["dense_cost"].get("params"):
        lines.append(
            f"params {result['dense_cost']['params']:,} -> {choice['params_after']:,}, "
            f"FLOPs {result['dense_cost']['flops']:,} -> {choice['flops_after']:,}"
        )
    if choice["left_whole"]:
        lines.append(f"left whole: {', '.join(choice['left_whole'])}")
    if not choice["groups"]:
        # A structural step needs a ratio above 0 or an override: with nothing chosen there is no step to write.
        lines.append("no structural step: nothing to remove within the budget")
        return toml_text({}, tuple(lines))
    return toml_text({"step": [recipe_step(neurons, choice)]}, tuple(lines))


def budget_lines(choice: dict, metric: str) -> list[str]:
    """What a budget's choice promises, in words: the per-layer rule and the measured combined drop."""
    limit = choice["limit"]
    lines = [f"each listed layer, pruned alone one-shot, loses at most {limit:g} {metric}"]
    if "combined_drop" not in choice:
        return lines
    checks = len(choice["checks"])
    backed = [c["backed_off"] for c in choice["checks"] if "backed_off" in c]
    if not choice["fits"]:
        lines.append(
            f"no combination fits the budget: every non-empty choice, pruned together, lost more than {limit:g} "
            f"{metric} ({checks} checks); everything is left dense"
        )
        return lines
    if not choice.get("layers", choice.get("groups")):
        return lines
    lines.append(
        f"pruned together, as this recipe does, they lose {choice['combined_drop']:.4f} {metric} (measured; "
        f"{checks} check{'s' if checks != 1 else ''}"
        + (f", backed off: {', '.join(_notch(b) for b in backed)})" if backed else ")")
    )
    return lines


def _notch(step: dict) -> str:
    to = "dense" if step["to"] is None else f"{step['to']:g}"
    return f"{step.get('layer', step.get('group'))} {step['from']:g}->{to}"


def run_sensitivity(
    model: Path,
    options: SensitivityOptions,
    recipe_out: Path | None = None,
    force: bool = False,
    unsafe: bool = False,
    progress: Progress | None = None,
) -> SensitivityReport | StructuralSensitivityReport:
    """Load a saved model once, run :func:`analyze` (or, with ``neuron_ratios``, the structural
    :func:`~prunectl.core.run.structural_sensitivity.analyze_structure`) on it, and write the budget's recipe.

    Args:
        model: the model file (never modified).
        options: what to test.
        recipe_out: where to write the recipe (needs ``options.budget``), or None.
        force: replace an existing ``recipe_out``.
        unsafe: allow Lambda-layer code stored in the model to be deserialized.
        progress: called after every trial.

    Returns:
        The report of :func:`analyze`, with the ``model`` file and the ``recipe_path``.

    Raises:
        OptionError: ``recipe_out`` without a budget.
        OutputError: ``recipe_out`` cannot be written (checked before any work).
        PrunectlError: any problem with the model, the data or the options.
    """
    if recipe_out is not None and options.budget is None:
        raise OptionError(
            "{recipe_out} needs {budget} D to choose the sparsities. "
            f"Received: {{recipe_out}} {recipe_out} without {{budget}}",
            "recipe_out",
            "budget",
        )
    if recipe_out is not None:
        data = options.evaluation.data if options.evaluation else None
        check_output(recipe_out, force, inputs=(model, *([data] if data else [])))
    with open_model_file(model) as source:
        info = file_info(source.path, source.format)
        loaded = keras_io.load_model(source, unsafe=unsafe)
    if options.neuron_ratios:
        from prunectl.core.run.structural_sensitivity import analyze_structure

        if options.evaluation is None or options.neurons is None:  # __post_init__ sees to both; replace() may not
            raise OptionError("structural sensitivity needs evaluation options. Received: evaluation=None")
        report: SensitivityReport | StructuralSensitivityReport = analyze_structure(
            loaded,
            options.evaluation,
            options.neurons,
            options.neuron_ratios,
            options.budget,
            progress,
            info,
            recipe_out,
        )
    else:
        report = analyze(loaded, options, progress, info, recipe_out)
    if recipe_out is not None:
        write_text_atomic(recipe_out, recipe_toml(report.to_dict()))
    return report
