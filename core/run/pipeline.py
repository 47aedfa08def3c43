"""The ordered steps of one ``prune`` run, and the runner that applies them to a live model.

A pipeline is a sequence of steps in any order: structural (:class:`NeuronPruning`,
kind ``neurons``), weight (:class:`WeightPruning`, ``weights``) and fine-tuning
(:class:`Finetune`, ``finetune``). A weight step directly followed by a fine-tune
step runs *with* it (:func:`fuse`): pruned at the first step of training, or
gradually as the fine-tune step's schedule says, then trained with its masks held.
Every fine-tune step holds the zeros of every weight step before it, so weights
pruned by an earlier step stay zero through later training.

``iterations = N`` splits one step into N equal stages (:func:`split`) with a
fine-tune step between consecutive stages: stage k of a ratio or sparsity ``r``
brings the model to ``r * k / N`` of its units removed or weights zeroed, counted
against the model the step started from.

:class:`Runner` holds the live model and applies steps one by one, recording each
step's outcome (params, multiply-adds, sparsity, and the metrics where evaluated);
the ``prune`` job and the ``--target`` search both drive it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from prunectl.core.errors import OptionError
from prunectl.core.structure.plan import NeuronPruning
from prunectl.core.weights.prune import WeightPruning

if TYPE_CHECKING:
    from prunectl.core.training.finetune import FinetuneOptions


@dataclass(frozen=True)
class Finetune:
    """A fine-tune step: train with every zero pruned so far held.

    Attributes:
        options: how to train (data, epochs, schedule...), the run's fine-tuning options with the step's own values.
        prune: the weight step it runs with (the step just before it), or None.
    """

    options: FinetuneOptions
    prune: WeightPruning | None = None

    def get_config(self) -> dict:
        config = self.options.get_config()
        config.update(config.pop("reader"))
        return {"finetune_epochs": config.pop("epochs"), **config}


Step = NeuronPruning | WeightPruning | Finetune
KINDS = ("neurons", "weights", "finetune")


def kind_of(step: Step) -> str:
    """``"neurons"``, ``"weights"`` or ``"finetune"``."""
    if isinstance(step, NeuronPruning):
        return "neurons"
    if isinstance(step, WeightPruning):
        return "weights"
    return "finetune"


def _stage(total: float, k: int, n: int) -> float:
    """Stage k's fraction of the remaining model so that k of n stages remove ``total * k / n`` of the start."""
    done, target = total * (k - 1) / n, total * k / n
    return 1 - (1 - target) / (1 - done)


def split(step: Step, iterations: int) -> list[Step]:
    """``step`` as ``iterations`` equal stages, in order (without the fine-tuning between them).

    A ratio or sparsity ``r`` (and each per-layer override) becomes stage ratios such
    that after stage k, ``r * k / n`` of the step's starting units or weights are gone:
    a structural stage prunes the remaining units (its ratio is of what is left), a
    weight stage prunes to the cumulative sparsity (the zeros so far are the smallest
    magnitudes, so they stay selected). A threshold ``t`` becomes ``t * k / n``.

    Raises:
        OptionError: ``iterations`` below 1, or a step that cannot be split (fine-tuning, an N:M pattern).
    """
    if iterations < 1:
        raise OptionError(f"iterations must be at least 1. Received: iterations = {iterations}")
    if iterations == 1:
        return [step]
    if isinstance(step, Finetune):
        raise OptionError(
            f"iterations split a pruning step into stages; a fine-tune step has none (give it more epochs). "
            f"Received: iterations = {iterations} in a fine-tune step"
        )
    n = iterations
    if isinstance(step, NeuronPruning):
        return [
            replace(
                step,
                ratio=None if step.ratio is None else _stage(step.ratio, k, n),
                threshold=None if step.threshold is None else step.threshold * k / n,
                layers=tuple((p, _stage(r, k, n)) for p, r in step.layers),
            )
            for k in range(1, n + 1)
        ]
    if step.pattern is not None and step.pattern.kind == "nm":
        raise OptionError(
            f"an N:M pattern holds {step.pattern.label} from the start, so it cannot be reached in stages. "
            f"Received: iterations = {iterations} with pattern {step.pattern.label}"
        )
    return [
        replace(
            step,
            sparsity=None if step.sparsity is None else step.sparsity * k / n,
            threshold=None if step.threshold is None else step.threshold * k / n,
            layers=tuple(
                (p, None if t is None else t * k / n, None if s is None else s * k / n) for p, t, s in step.layers
            ),
        )
        for k in range(1, n + 1)
    ]


def fuse(steps: list[Step]) -> tuple[Step, ...]:
    """Join each weight step directly followed by a fine-tune step into that step (``Finetune.prune``)."""
    out: list[Step] = []
    for step in steps:
        if isinstance(step, Finetune) and step.prune is None and out and isinstance(out[-1], WeightPruning):
            out[-1] = replace(step, prune=out[-1])
        else:
            out.append(step)
    return tuple(out)


def unfused(steps: tuple[Step, ...]) -> list[Step]:
    """The steps as written: each fused weight step back before its fine-tune step."""
    out: list[Step] = []
    for step in steps:
        if isinstance(step, Finetune) and step.prune is not None:
            out += [step.prune, replace(step, prune=None)]
        else:
            out.append(step)
    return out


def classic(neurons: NeuronPruning | None, weights: WeightPruning | None, finetune) -> tuple[Step, ...]:
    """The fixed pipeline of the flat options: structural, then weights, then fine-tuning."""
    steps: list[Step] = [s for s in (neurons, weights) if s is not None]
    if finetune is not None:
        steps.append(Finetune(finetune))
    return fuse(steps)


def step_config(step: Step) -> dict:
    """A step keyed by recipe option names (``neuron-ratio``, ``finetune-epochs``), its kind first."""

    def kebab(config: dict) -> dict:
        return {k.replace("_", "-"): v for k, v in config.items()}

    config = step.get_config()
    layers = config.pop("layers", None)
    return {"kind": kind_of(step), **kebab(config), **({"layers": layers} if layers else {})}


@dataclass
class StepRecord:
    """What one step did, as the report shows it."""

    index: int
    kind: str
    config: dict
    params: int | None = None
    flops: int | None = None
    sparsity: float | None = None
    metrics: dict | None = None
    seconds: float = 0.0
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "step": self.index,
            "kind": self.kind,
            "config": self.config,
            "params": self.params,
            "flops": self.flops,
            "sparsity": self.sparsity,
            "metrics": self.metrics,
            "seconds": round(self.seconds, 3),
            **self.detail,
        }


def live_sparsity(model) -> float:
    """The fraction of a live model's prunable weights that are exactly zero."""
    from prunectl.core.weights.catalog import keras_weight_entries

    pairs = [(e, v) for e, v in keras_weight_entries(model) if e.prunable]
    count = sum(e.size for e, _ in pairs)
    return sum(int((v.numpy() == 0).sum()) for _, v in pairs) / count if count else 0.0


def _merge(results: dict, new: dict) -> dict:
    """Per-tensor results over several steps: the first step's zeros before, the last one's figures."""
    out = dict(results)
    for key, result in new.items():
        old = out.get(key)
        out[key] = replace(result, zeros_before=old.zeros_before) if old is not None else result
    return out


class Runner:
    """Applies steps to a live model in order and records what each did.

    Args:
        loaded: the model as loaded (``keras_io.load_model``); replaced as structural steps rebuild it.
        steps: the whole pipeline, so that the runner knows whether the model before pruning must be kept.
        x: calibration inputs (activation criteria, data-aware weight criteria), or None.
        evaluate: evaluates a model on the run's evaluation data (an ``Evaluator``), or None.
        training: fine-tuning progress.
        events: stage and plan events (see ``job.Events``).
        unsafe: Lambda-layer code may be rebuilt.
    """

    def __init__(self, loaded, steps, x=None, evaluate=None, training=None, events=None, unsafe: bool = False):
        self.loaded = loaded
        self.original = loaded.model
        self.x, self.evaluate, self.training, self.unsafe = x, evaluate, training, unsafe
        self.events = events or (lambda stage, value=None: None)
        self.notes: list[str] = []
        self.results: dict = {}
        self.held: list[WeightPruning] = []
        self.plans: list = []
        self.finetunes: list[dict] = []
        self.records: list[StepRecord] = []
        self.data_aware: dict | None = None
        self._copied = False
        # A fine-tune step after another step needs the model before pruning (evaluated, and the teacher); a
        # fused first step makes its own copy, as a flat run always has.
        self._keeps_original = any(isinstance(s, Finetune) for s in steps[1:]) or bool(
            steps and isinstance(steps[0], Finetune) and steps[0].prune is None
        )

    @property
    def model(self):
        return self.loaded.model

    def run(self, step: Step, plan=None) -> StepRecord:
        """Apply one step to the live model and record its outcome.

        Args:
            step: the step.
            plan: for a structural step, its plan when already made on the current model.
        """
        start = time.perf_counter()
        if isinstance(step, Finetune) and step.prune is not None:
            # Two steps as written: the weight step's outcome is the model right after it pruned.
            pruning = StepRecord(len(self.records) + 1, "weights", step_config(step.prune))
            self.records.append(pruning)
        else:
            pruning = None
        written = replace(step, prune=None) if isinstance(step, Finetune) and pruning else step
        record = StepRecord(len(self.records) + 1, kind_of(step), step_config(written))
        if isinstance(step, NeuronPruning):
            self._neurons(step, record, plan)
        elif isinstance(step, WeightPruning):
            self._weights(step)
        else:
            self._finetune(step, record)
        self._measure(record, evaluated=record.metrics is not None)
        record.seconds = time.perf_counter() - start
        if pruning is not None:
            after = (self.finetunes[-1].get("evaluation") or {}).get("after_pruning")
            pruning.params, pruning.flops, pruning.sparsity = record.params, record.flops, record.sparsity
            pruning.metrics = dict(after) if after else None
        self.records.append(record)
        return record

    def adopt(self, step: Step, model, plan=None, finetune: Finetune | None = None, report: dict | None = None) -> None:
        """Take ``model`` — the current model with ``step`` applied (and fine-tuned by ``finetune``, which wrote
        ``report``) elsewhere — as the run's model, recording the steps as :meth:`run` would."""
        start = time.perf_counter()
        record = StepRecord(len(self.records) + 1, kind_of(step), step_config(step))
        if plan is not None:
            self.plans.append(plan)
            record.detail["units"] = plan.totals()["units"]
        if isinstance(step, WeightPruning):
            self.held.append(step)
        self.loaded = replace(self.loaded, model=model)
        evaluation = (report or {}).get("evaluation") or {}
        if report is not None:
            record.metrics = dict(evaluation["after_pruning"]) if evaluation.get("after_pruning") else None
        self._measure(record, evaluated=report is not None)
        self.records.append(record)
        if finetune is not None and report is not None:
            self.finetunes.append(report)
            tuned = StepRecord(len(self.records) + 1, "finetune", step_config(finetune))
            last = evaluation.get("after_finetuning")
            tuned.metrics = dict(last) if last else None
            tuned.detail["epochs"] = finetune.options.epochs
            self._measure(tuned, evaluated=True)
            self.records.append(tuned)
        record.seconds = time.perf_counter() - start

    def _neurons(self, step: NeuronPruning, record: StepRecord, plan=None) -> None:
        from prunectl.core.io import keras_io
        from prunectl.core.structure import plan as structural
        from prunectl.core.structure.backbone import plain_model_note

        if plan is None:
            self.events("planning", None)
            plan = structural.plan_structure(self.model, step, self.x)
            self.events("plan", plan.to_dict())
        before = self.model
        self.loaded = replace(self.loaded, model=structural.apply_plan(before, plan, unsafe=self.unsafe))
        if not self.plans:
            self.notes += [note for note in [plain_model_note(before)] if note]
        self.plans.append(plan)
        record.detail["units"] = plan.totals()["units"]
        spec = self.loaded.compile_spec
        if spec and spec.loss is not None:
            self.notes += [n for n in keras_io.compile_model(self.model, spec) if n not in self.notes]

    def _keep_original(self) -> None:
        """Copy the model before its weights are first changed in place, when fine-tuning will need it."""
        if self._keeps_original and not self._copied and self.model is self.original:
            from prunectl.core.io import keras_io

            self.original = keras_io.copy_model(self.original)
        self._copied = True

    def _data_aware(self, step: WeightPruning) -> WeightPruning:
        """Prune by a data-aware criterion; the magnitude step that keeps exactly these zeros."""
        from prunectl.core.training.data_aware import DEFAULT_CALIBRATION_SAMPLES, prune_data_aware

        if self.x is None:
            raise OptionError(f"the {step.criterion} criterion needs calibration data. Received: no --data")
        self.events("calibrating", None)
        outcome = prune_data_aware(self.model, step, self.x, step.calibration_samples or DEFAULT_CALIBRATION_SAMPLES)
        self.notes += outcome.notes
        self.results = _merge(self.results, outcome.results)
        self.data_aware = outcome.to_dict()
        return replace(step, criterion="magnitude", calibration_samples=None)

    def _weights(self, step: WeightPruning) -> None:
        from prunectl.core.weights.prune import prune_keras_model

        self._keep_original()
        if step.criterion != "magnitude":
            step = self._data_aware(step)
        else:
            self.results = _merge(self.results, prune_keras_model(self.model, step))
        self.held.append(step)

    def _finetune(self, step: Finetune, record: StepRecord) -> None:
        from prunectl.core.training.finetune import finetune_model

        prune = step.prune
        pruned_before = bool(self.records) or prune is not None
        if prune is not None:
            self._keep_original()
            if prune.criterion != "magnitude":
                prune = self._data_aware(prune)
        outcome = finetune_model(
            self.loaded,
            prune,
            step.options,
            self.training,
            original=self.original if pruned_before and self.original is not self.model else None,
            hold=tuple(self.held),
        )
        self.results = _merge(self.results, outcome.results)
        if self.data_aware is not None and prune is not None:
            outcome.report["weight_criterion"] = self.data_aware
        self.notes += [n for n in outcome.notes if n not in self.notes]
        if prune is not None:
            self.held.append(prune)
        self.finetunes.append(outcome.report)
        evaluation = outcome.report.get("evaluation") or {}
        last = evaluation.get("after_finetuning") or evaluation.get("after_pruning")
        record.metrics = dict(last) if last else None
        record.detail["epochs"] = step.options.epochs

    def _measure(self, record: StepRecord, evaluated: bool) -> None:
        from prunectl.core.structure.plan import model_cost

        cost = model_cost(self.model)
        record.params, record.flops = cost["params"], cost["flops"]
        record.sparsity = live_sparsity(self.model)
        if not evaluated and self.evaluate is not None:
            record.metrics = self.evaluate(self.model)
