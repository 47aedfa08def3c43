"""``prune --target``: choose the per-layer ratios that reach a target within an accuracy budget.

The search runs in stages. Each stage aims at its share of the way to the target
(stage k of n: ``k / n`` of the reduction), measured on the current model:

1. *Trials*: every prunable group (or, for ``sparsity``, every prunable layer) is cut
   alone to each tested ratio and evaluated (``structural_trials``), which gives its own
   drop and what it removes.
2. *Choice*: starting from nothing, the cut that costs the least drop per unit removed
   is deepened one notch at a time until the stage's goal is met by the plan (counted
   exactly, not estimated).
3. *Back-off*: the choice is applied to a copy of the model — and fine-tuned when
   epochs are given — and measured against the dense model; while the drop is over the
   budget, the most fragile pick goes back one notch (:func:`~prunectl.core.run.backoff.back_off`).
4. The accepted choice is applied to the run's model as an ordinary step (and its
   fine-tune step), so the steps that made the model are exactly the recipe written.

The search stops when the target is met, or when a stage cannot remove anything
within the budget; the best model reached is then written and the run exits 3.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from prunectl.core.errors import OptionError
from prunectl.core.run.backoff import Option, back_off, metric_drop
from prunectl.core.run.pipeline import Finetune, Runner, live_sparsity
from prunectl.core.structure.plan import NeuronPruning
from prunectl.core.weights.prune import WeightPruning

TARGETS = ("flops", "params", "size", "latency", "sparsity")
#: The fractions of a group's units (or a layer's weights) each stage's trials try.
UNIT_RATIOS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
SPARSITIES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
_UNITS = {"": 1, "b": 1, "kb": 1e3, "k": 1e3, "mb": 1e6, "m": 1e6, "gb": 1e9, "kib": 1024, "mib": 1 << 20}
_TIMES = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


@dataclass(frozen=True)
class Target:
    """What the search aims at.

    Attributes:
        kind: ``flops``/``params`` (a fraction of the model's, in (0, 1)), ``size`` (bytes on disk),
            ``latency`` (seconds per batch, as ``--benchmark`` measures), ``sparsity`` (fraction of
            prunable weights zeroed, in (0, 1)).
        value: the figure to reach.
        text: as given.
    """

    kind: str
    value: float
    text: str

    def get_config(self) -> dict:
        return {"kind": self.kind, "value": self.value, "text": self.text}


def parse_target(text: str) -> Target:
    """``flops=0.5``, ``params=0.5``, ``size=2MB``, ``latency=5ms``, ``sparsity=0.9`` as a :class:`Target`.

    Raises:
        OptionError: an unknown kind or a value out of range, naming what was received.
    """
    kind, sep, raw = str(text).partition("=")
    kind, raw = kind.strip().lower(), raw.strip().lower()
    if not sep or kind not in TARGETS:
        raise OptionError(
            f"{{target}} is KIND=VALUE with KIND one of {', '.join(TARGETS)} (e.g. flops=0.5, size=2MB, "
            f"latency=5ms). Received: {{target}} {text!r}",
            "target",
        )
    units = _TIMES if kind == "latency" else _UNITS if kind == "size" else {"": 1}
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*([a-z]*)", raw)
    if match is None or match.group(2) not in units:
        shown = ", ".join(u for u in units if u) or "none"
        raise OptionError(f"{{target}} {kind} takes a number (units: {shown}). Received: {{target}} {text!r}", "target")
    value = float(match.group(1)) * units[match.group(2)]
    if kind in ("flops", "params", "sparsity") and not 0 < value < 1:
        what = "the fraction of the model's to keep" if kind != "sparsity" else "the fraction of weights zeroed"
        raise OptionError(f"{{target}} {kind} is {what}, in (0, 1). Received: {{target}} {text!r}", "target")
    if value <= 0:
        raise OptionError(f"{{target}} {kind} must be above 0. Received: {{target}} {text!r}", "target")
    return Target(kind, value, text)


def _drop(metric: str, dense: dict, values: dict) -> float:
    return metric_drop(metric, dense[metric], values[metric])


class _Measure:
    """The target's figure of a model, and the cheap exact proxy the stages aim with."""

    def __init__(self, target: Target, original, x, compression: str):
        from prunectl.core.structure.plan import model_cost

        self.target, self.x, self.compression = target, x, compression
        cost = model_cost(original)
        self.proxy = "flops" if target.kind in ("flops", "latency") else "params"
        self.start = cost[self.proxy]
        if target.kind in ("flops", "params"):
            self.goal = target.value * self.start
            self.dense = float(cost[target.kind])
        elif target.kind in ("size", "latency"):
            self.dense = self.actual(original)
            # Size follows params and latency follows multiply-adds, roughly in proportion; the final
            # figure is measured, not assumed.
            self.goal = self.start * min(1.0, target.value / self.dense)
        else:
            self.proxy, self.start, self.goal, self.dense = "sparsity", 0.0, target.value, 0.0

    def proxy_of(self, model) -> float:
        from prunectl.core.structure.plan import model_cost

        return model_cost(model)[self.proxy]

    def actual(self, model) -> float:
        """The target's own figure: params, FLOPs, bytes written, seconds per batch, or sparsity."""
        if self.target.kind in ("flops", "params"):
            return float(self.proxy_of(model))
        if self.target.kind == "size":
            from prunectl.core.io.writer import save_keras_model

            with tempfile.TemporaryDirectory(prefix="prunectl-size-") as folder:
                path = Path(folder) / "model.keras"
                save_keras_model(model, path, self.compression)
                return float(os.path.getsize(path))
        if self.target.kind == "latency":
            from prunectl.core.structure.cost import make_batch, measure_latency

            return measure_latency([model], make_batch(model, self.x), repeats=30)[0]
        return live_sparsity(model)

    def met(self, value: float) -> bool:
        if self.target.kind in ("flops", "params"):
            return value <= self.goal * (1 + 1e-9)
        if self.target.kind == "sparsity":
            return value >= self.target.value - 1e-9
        return value <= self.target.value

    def stage_goal(self, k: int, n: int) -> float:
        return self.start + (self.goal - self.start) * k / n


def _greedy(options: dict[str, list[Option]], need: float) -> dict[str, float]:
    """The cheapest cuts, one notch at a time, until they remove at least ``need`` (estimated by the trials)."""
    choice: dict[str, float] = {}
    removed = 0.0
    while removed < need:
        best = None
        for key, opts in options.items():
            current = next((o for o in opts if o.setting == choice.get(key)), None)
            deeper = [o for o in opts if o.setting > (current.setting if current else 0.0)]
            if not deeper:
                continue
            nxt = min(deeper, key=lambda o: o.setting)
            gain = nxt.removed - (current.removed if current else 0.0)
            cost = max(nxt.drop, 0.0) - max(current.drop if current else 0.0, 0.0)
            score = (max(cost, 0.0) + 1e-4) / max(gain, 1e-12)
            if best is None or score < best[0]:
                best = (score, key, nxt, gain)
        if best is None:
            break
        _, key, nxt, gain = best
        choice[key] = nxt.setting
        removed += gain
    return choice


class Search:
    """One ``--target`` search over a :class:`Runner`'s model (see the module docstring).

    Args:
        runner: holds the live model; accepted steps are applied through it.
        target: what to reach.
        budget: the largest drop allowed against the model before pruning (accuracy, or loss).
        evaluate: evaluates a model on the validation data.
        stages: how many stages the way to the target is split into.
        finetune: fine-tuning after each stage (and for each check), or None.
        base: the structural step whose criterion and options the stages use.
        compression: the ``--compression`` name models are written with (for ``size``).
        events: stage events for progress.
    """

    def __init__(
        self, runner: Runner, target: Target, budget: float, evaluate, stages: int, finetune, base, compression, events
    ):
        self.runner, self.target, self.budget, self.evaluate = runner, target, budget, evaluate
        self.stages, self.finetune, self.base, self.events = stages, finetune, base, events
        self.measure = _Measure(target, runner.model, runner.x, compression)
        self.dense = evaluate(runner.model)
        from prunectl.core.training.evaluate import accuracy_key

        self.metric = accuracy_key(self.dense) or "loss"
        self.steps: list = []
        self.log: list[dict] = []
        self._made: dict = {}

    def run(self) -> dict:
        """Search, applying the accepted steps to the runner's model; returns the report's ``search`` block."""
        reached = self.measure.actual(self.runner.model) if self.target.kind == "sparsity" else None
        stopped = None
        for k in range(1, self.stages + 1):
            goal = self.measure.stage_goal(k, self.stages)
            stage = self._stage(k, goal)
            self.log.append(stage)
            if not stage["accepted"]:
                stopped = stage["reason"]
                break
            if self.measure.met(self.measure.actual(self.runner.model)) and self.target.kind != "latency":
                break
        reached = self.measure.actual(self.runner.model)
        values = self.evaluate(self.runner.model)
        met = self.measure.met(reached)
        return {
            "target": self.target.get_config(),
            "budget": {"metric": self.metric, "limit": self.budget},
            "dense": {"value": self.measure.dense, self.metric: self.dense[self.metric]},
            "reached": {
                "value": reached,
                "ratio": reached / self.measure.dense if self.measure.dense else None,
                self.metric: values[self.metric],
                "drop": _drop(self.metric, self.dense, values),
            },
            "met": met,
            "stages": self.log,
            "stopped": stopped,
        }

    def _options(self, stage: int) -> tuple[dict[str, list[Option]], float]:
        """Each key's tested settings on the current model, and the current proxy figure."""
        model = self.runner.model
        if self.target.kind == "sparsity":
            return self._weight_options(model), live_sparsity(model)
        from prunectl.core.run.structural_sensitivity import structural_trials

        self.events(f"search stage {stage}/{self.stages}: cutting each group alone", None)
        rows = structural_trials(model, self.evaluate, self.base, UNIT_RATIOS, self.runner.x, dense=self.dense)
        current = self.measure.proxy_of(model)
        key = f"{self.measure.proxy}_after"
        options = {
            row["pattern"]: [
                Option(t["ratio"], max(t["drop"], 0.0) + 0.0, current - t[key])
                for t in row["trials"]
                if t["units_after"] < row["units"] and current - t[key] > 0
            ]
            for row in rows
        }
        # The dense model's drop is the reference: a trial's drop is against it, not the current model.
        own = _drop(self.metric, self.dense, self.evaluate(model)) if self.runner.records else 0.0
        options = {k: [replace(o, drop=max(o.drop - own, 0.0)) for o in v] for k, v in options.items() if v}
        return options, current

    def _weight_options(self, model) -> dict[str, list[Option]]:
        from prunectl.core.weights.catalog import keras_weight_entries
        from prunectl.core.weights.prune import prune_keras_model

        pairs = [(e, v) for e, v in keras_weight_entries(model) if e.prunable]
        total = sum(e.size for e, _ in pairs)
        layers: dict[str, list] = {}
        for entry, variable in pairs:
            layers.setdefault(entry.layer, []).append((entry, variable))
        options: dict[str, list[Option]] = {}
        for layer, held in layers.items():
            saved = [v.numpy().copy() for _, v in held]
            zeros = sum(int((a == 0).sum()) for a in saved)
            size = sum(e.size for e, _ in held)
            pattern = f"^{re.escape(layer)}$"
            opts = []
            for sparsity in SPARSITIES:
                if sparsity * size <= zeros:
                    continue
                try:
                    prune_keras_model(model, WeightPruning(sparsity=sparsity, include=(pattern,)))
                    values = self.evaluate(model)
                finally:
                    for (_, variable), array in zip(held, saved):
                        variable.assign(array)
                opts.append(
                    Option(
                        sparsity, max(_drop(self.metric, self.dense, values), 0.0), (sparsity * size - zeros) / total
                    )
                )
            if opts:
                options[pattern] = opts
        return options

    def _step(self, choice: dict[str, float]):
        if self.target.kind == "sparsity":
            return WeightPruning(sparsity=0.0, layers=tuple((p, None, s) for p, s in choice.items()))
        return replace(self.base, ratio=0.0, threshold=None, scope="layer", layers=tuple(choice.items()))

    def _candidate(self, choice: dict[str, float]):
        """The current model with ``choice`` applied (and fine-tuned), leaving the run's model as it was."""
        from prunectl.core.io import keras_io
        from prunectl.core.structure.plan import apply_plan, plan_structure
        from prunectl.core.training.finetune import finetune_model
        from prunectl.core.weights.prune import prune_keras_model

        runner, step, plan, report = self.runner, self._step(choice), None, None
        if isinstance(step, WeightPruning):
            model = keras_io.copy_model(runner.model)
            prune_keras_model(model, step)
        else:
            plan = plan_structure(runner.model, step, runner.x)
            model = apply_plan(runner.model, plan, unsafe=runner.unsafe)
        loaded = replace(runner.loaded, model=model)
        spec = loaded.compile_spec
        if spec and spec.loss is not None:
            keras_io.compile_model(model, spec)
        if self.finetune is not None:
            held = (*runner.held, *([step] if isinstance(step, WeightPruning) else []))
            report = finetune_model(loaded, None, self.finetune, None, original=runner.original, hold=held).report
        # Kept, so the accepted candidate is the model the check measured (not a second, different training).
        self._made = {"choice": dict(choice), "step": step, "model": model, "plan": plan, "report": report}
        return model

    def _stage(self, k: int, goal: float) -> dict:
        options, current = self._options(k)
        if self.target.kind == "sparsity":
            need = goal - current
        else:
            need = current - goal
        stage: dict = {"stage": k, "goal": goal, "start": current, "accepted": False}
        choice = _greedy(options, need) if need > 0 else {}
        if not choice:
            stage["reason"] = "nothing left to cut" if need > 0 else "the goal was already met"
            stage["accepted"] = need <= 0
            return stage
        if self.target.kind != "sparsity":
            choice = self._exact(choice, options, goal)
        stage["picked"] = dict(choice)
        self.events(f"search stage {k}/{self.stages}: checking the cuts together", None)

        def combined(picks: dict[str, float]) -> float:
            return _drop(self.metric, self.dense, self.evaluate(self._candidate(picks)))

        found = back_off(choice, options, combined, self.budget)
        stage.update(checks=found.checks, choice=found.choice, drop=found.drop)
        if not found.choice:
            stage["reason"] = f"no cut of this stage holds the budget ({self.budget:g} {self.metric})"
            return stage
        made = self._made if self._made.get("choice") == found.choice else None
        if made is None:  # the last check was of another choice: make the accepted one again
            self._candidate(found.choice)
            made = self._made
        step = made["step"]
        tuning = Finetune(self.finetune) if self.finetune is not None else None
        self.runner.adopt(step, made["model"], made["plan"], tuning, made["report"])
        self.steps += [step, *([tuning] if tuning is not None else [])]
        self._made = {}
        stage["accepted"] = True
        model = self.runner.model
        stage["reached"] = self.measure.proxy_of(model) if self.target.kind != "sparsity" else live_sparsity(model)
        return stage

    def _exact(self, choice: dict[str, float], options: dict[str, list[Option]], goal: float) -> dict[str, float]:
        """Deepen the choice until its plan (counted exactly, coupled layers included) meets the stage goal."""
        from prunectl.core.structure.plan import plan_structure

        model = self.runner.model
        for _ in range(64):
            plan = plan_structure(model, self._step(choice), self.runner.x)
            after = plan.totals()[self.measure.proxy]["after"]
            if after <= goal:
                return choice
            extra = {k: [o for o in v if o.setting > choice.get(k, 0.0)] for k, v in options.items()}
            extra = {k: v for k, v in extra.items() if v}
            if not extra:
                return choice
            key = min(extra, key=lambda k: (min(extra[k], key=lambda o: o.setting).drop, k))
            choice = {**choice, key: min(extra[key], key=lambda o: o.setting).setting}
        return choice


def check_search(target: Target, budget: float | None, stages: int) -> None:
    """The search's own rules, before any work.

    Raises:
        OptionError: no budget, or fewer than one stage.
    """
    if budget is None:
        raise OptionError(
            f"{{target}} searches within an accuracy budget; add {{max_accuracy_drop}} D. "
            f"Received: {{target}} {target.text} without it",
            "target",
            "max_accuracy_drop",
        )
    if stages < 1:
        raise OptionError(f"{{stages}} must be at least 1. Received: {{stages}} {stages}", "stages")


def default_base() -> NeuronPruning:
    """The structural step the stages use: L1 norms, per group, nothing rounded."""
    return NeuronPruning(ratio=0.5)
