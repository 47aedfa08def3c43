"""What one ``prune`` run is asked to do, checked once, before any work.

:class:`PruneRequest` is the typed request :func:`~prunectl.core.run.job.run_prune`
reads; its ``__post_init__`` holds every rule that relates its steps and options
to each other. :func:`build_request` folds flat option values (keyed by the
``prune`` command's parameter names) into one, and holds the few rules that only
exist for flat values (an option given without the option it refines).

Every rule raises :class:`~prunectl.core.errors.OptionError` naming its fields as
``{field}`` placeholders, which the CLI shows as its flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from prunectl.core.errors import OptionError
from prunectl.core.options import COMPRESSIONS, DEFAULT_COMPRESSION, ENGINES, check_stdout
from prunectl.core.run.gates import GATES, gate_config, gate_metrics, gate_pairs
from prunectl.core.run.pipeline import Finetune, Step, classic, fuse, split, step_config, unfused
from prunectl.core.structure.criteria import CRITERIA
from prunectl.core.structure.plan import NeuronPruning
from prunectl.core.weights.prune import WeightPruning, pattern_of

if TYPE_CHECKING:
    from prunectl.core.run.search import Target
    from prunectl.core.training.evaluate import EvalOptions
    from prunectl.core.training.finetune import FinetuneOptions

# The data-reader options, passed to FinetuneOptions as its ``reader``.
READER_KEYS = ("x_key", "y_key", "label_col")


@dataclass(frozen=True)
class PruneRequest:
    """Everything one ``prune`` run needs; read by :func:`~prunectl.core.run.job.run_prune`.

    Attributes:
        model: the input model path (never modified).
        weights: the weight-pruning step, or None.
        output: output model path (default: ``<stem>.pruned<suffix>`` beside the input).
        report: report path (default: ``<output file name>.report.json`` beside the output).
        compression: one of ``options.COMPRESSIONS``.
        engine: ``auto``, ``file`` or ``keras``.
        force: replace existing outputs.
        unsafe: allow Lambda-layer code to be deserialized by the Keras engine.
        keep_optimizer: keep the optimizer's saved state in the output (file engine).
        gates: ``(gate name, limit)`` pairs checked against the report (see ``core.run.gates``).
        markdown: also write the report as Markdown here.
        finetune: fine-tune after pruning (Keras engine), or None.
        neurons: the structural step (removes units before weights are pruned), or None.
        data: a data file whose inputs calibrate activation criteria, feed ``benchmark``
            and, without fine-tuning, evaluate for data gates.
        dry_run: plan the structural step and return its report; write nothing.
        benchmark: time the original and the pruned model on the same batch.
        fold_batchnorm: fold BatchNormalization layers into the Dense or convolution before them, after every
            step (the output is for inference), checked on ``data`` (or random inputs) and recorded.
        evaluation: evaluate the model before and after the steps on this data (for
            gates that need accuracy); fine-tuning evaluates on its own validation data.
            Derived from ``data`` when a data gate needs it and none is given.
        recipe: the recipe file the request was read from, if any (recorded in the report).
        recipe_out: write the resolved pipeline here as a recipe (checked with the other outputs).
        steps: the pipeline in order (see ``core.run.pipeline``); derived from ``neurons``, ``weights`` and
            ``finetune`` (in that order) when not given, and then given instead of them.

    Raises:
        OptionError: a bad value, or options that contradict each other.
    """

    model: Path
    weights: WeightPruning | None = None
    output: Path | None = None
    report: Path | None = None
    compression: str = DEFAULT_COMPRESSION
    engine: str = "auto"
    force: bool = False
    unsafe: bool = False
    keep_optimizer: bool = False
    gates: tuple[tuple[str, float], ...] = ()
    markdown: Path | None = None
    finetune: FinetuneOptions | None = None
    neurons: NeuronPruning | None = None
    data: Path | None = None
    dry_run: bool = False
    benchmark: bool = False
    fold_batchnorm: bool = False
    evaluation: EvalOptions | None = None
    recipe: Path | None = None
    recipe_out: Path | None = None
    steps: tuple[Step, ...] = ()
    target: Target | None = None
    stages: int | None = None
    export: str | None = None
    quantize: str | None = None

    def __post_init__(self):
        if self.compression not in COMPRESSIONS:
            raise OptionError(
                f"{{compression}} must be one of {', '.join(COMPRESSIONS)}. Received: compression={self.compression!r}",
                "compression",
            )
        if self.engine not in ENGINES:
            raise OptionError(f"engine must be one of {', '.join(ENGINES)}. Received: engine={self.engine!r}")
        self._check_export()
        for name, limit in self.gates:
            GATES.get(name)(limit)
        if self.target is not None:
            self._check_target()
            return
        if not self.steps:
            object.__setattr__(self, "steps", classic(self.neurons, self.weights, self.finetune))
        elif (self.weights is not None or self.neurons is not None) and self.steps != classic(
            self.neurons, self.weights, self.finetune
        ):
            raise OptionError(
                "give the pipeline as ordered steps or as flat step options, not both. "
                "Received: steps with {threshold}/{sparsity}/{neuron_ratio}",
                "threshold",
                "sparsity",
                "neuron_ratio",
            )
        finetunes = [s.options for s in self.steps if isinstance(s, Finetune)]
        if finetunes:
            from prunectl.core.training.distribute import check_cluster

            check_cluster(finetunes[0].strategy)  # before TensorFlow is imported, which reads TF_CONFIG
        if self.dry_run and self.fold_batchnorm:
            raise OptionError(
                "{fold_batchnorm} changes the written model; {dry_run} writes none. Received: both",
                "fold_batchnorm",
                "dry_run",
            )
        if self.dry_run and not isinstance(self.steps[0], NeuronPruning):
            raise OptionError(
                "{dry_run} needs {neuron_threshold} or {neuron_ratio}. Received: {dry_run}",
                "dry_run",
                "neuron_threshold",
                "neuron_ratio",
            )
        for step in self.steps:
            self._check_step(step)
        needing = [(name, limit) for name, limit in self.gates if GATES.get(name).needs_data]
        if needing:
            self._check_gate_data(*needing[0], finetunes)
        reads_data = (
            bool(finetunes)
            or self.benchmark
            or self.fold_batchnorm
            or needing
            or any(CRITERIA.get(n.criterion).needs_data for n in self.neuron_steps())
            or self.data_aware()
            or self.export is not None
        )
        if self.data is not None and not reads_data:
            raise OptionError(
                "{data} is read by {finetune_epochs}, an activation criterion, a data-aware {weight_criterion}, "
                "{benchmark}, {fold_batchnorm} or "
                f"{{max_accuracy_drop}}. Received: {{data}} {self.data} without any of them",
                "data",
                "finetune_epochs",
                "weight_criterion",
                "benchmark",
                "fold_batchnorm",
                "max_accuracy_drop",
            )
        trains_with_l1 = any(f.l1 > 0 and f.epochs > 0 for f in finetunes)
        # Training with an L1 penalty alone is a step of its own (sparsity by L1, pruned by a later run).
        # Folding alone is a step of its own too (a model made ready for inference).
        if not self.weight_steps() and not self.neuron_steps() and not trains_with_l1 and not self.fold_batchnorm:
            raise OptionError(
                "give a pruning step: {threshold}, {sparsity}, {neuron_threshold} or "
                "{neuron_ratio} (or a {recipe}). Received: none",
                "threshold",
                "sparsity",
                "neuron_threshold",
                "neuron_ratio",
                "recipe",
            )

    def _check_target(self) -> None:
        """A search chooses its own steps: it takes a budget and data, and no steps of its own."""
        from prunectl.core.run.search import check_search

        target = self.target
        assert target is not None  # noqa: S101 (only called with a target)
        if self.steps or self.weights is not None or self.neurons is not None or self.dry_run:
            raise OptionError(
                f"{{target}} chooses the steps itself; give no {{threshold}}, {{sparsity}}, {{neuron_ratio}}, "
                f"{{step}}, {{recipe}} steps or {{dry_run}} with it. Received: {{target}} {target.text} with steps",
                "target",
                "threshold",
                "sparsity",
                "neuron_ratio",
                "step",
                "dry_run",
            )
        budget = dict(self.gates).get("max-accuracy-drop")
        check_search(target, budget, self.search_stages())
        tuning = self.finetune
        data = self.data if tuning is None else tuning.val_data
        if data is None:
            raise OptionError(
                "{target} measures every cut on validation data: give {data} EVAL"
                + (" and, with {finetune_epochs}, {val_data} (not {val_split})" if tuning is not None else "")
                + f". Received: {{target}} {target.text} without it",
                "target",
                "data",
                "val_data",
                "finetune_epochs",
                "val_split",
            )
        if self.evaluation is None:
            from prunectl.core.training.evaluate import EvalOptions

            reader = tuning.reader if tuning is not None else ()
            object.__setattr__(self, "evaluation", EvalOptions(data, reader=reader, need_accuracy=True))
        if tuning is not None:
            from prunectl.core.training.distribute import check_cluster

            check_cluster(tuning.strategy)
            if tuning.strategy != "default":
                raise OptionError(
                    f"{{target}} fine-tunes many candidates in one process; use {{strategy}} default. "
                    f"Received: {{strategy}} {tuning.strategy}",
                    "target",
                    "strategy",
                )

    def search_stages(self) -> int:
        """The search's stages: as given, else 2 with fine-tuning between them and 1 without."""
        return self.stages if self.stages is not None else (2 if self.finetune is not None else 1)

    def _check_step(self, step: Step) -> None:
        """The rules of one step, and of a fine-tune step with the weight step it runs with."""
        if isinstance(step, NeuronPruning):
            if CRITERIA.get(step.criterion).needs_data and self.data is None:
                raise OptionError(
                    f"the {step.criterion} criterion needs calibration data; give {{data}} FILE. "
                    f"Received: {{neuron_criterion}} {step.criterion}",
                    "data",
                    "neuron_criterion",
                )
            return
        if isinstance(step, WeightPruning):
            self._check_weight_criterion(step, None)
            return
        options, weights = step.options, step.prune
        self._check_weight_criterion(weights, options)
        pattern = weights.pattern if weights is not None else None
        if options.schedule != "oneshot" and pattern and pattern.kind == "nm":
            raise OptionError(
                f"an N:M pattern holds {pattern.a} zeros in every group of {pattern.b} from the start, so "
                f"{{schedule}} {options.schedule} cannot raise its sparsity step by step; use {{schedule}} "
                f"oneshot. Received: {{schedule}} {options.schedule} {{pattern}} {pattern.label}",
                "schedule",
                "pattern",
            )
        if options.schedule != "oneshot" and (weights is None or weights.sparsity is None):
            schedule = options.schedule
            raise OptionError(
                f"{{schedule}} {schedule} prunes to a sparsity; give {{sparsity}}"
                + (" in the weight step just before the fine-tune step" if len(self.steps) > 1 else "")
                + f". Received: {{schedule}} {schedule} with "
                + ("{threshold}" if weights is not None else "no weight step"),
                "schedule",
                "sparsity",
                "threshold",
            )
        if weights is not None and weights.sparsity is not None:
            from prunectl.core.weights.schedules import SCHEDULES

            # The schedule's own checks (initial sparsity, window), here rather than after the model is loaded.
            SCHEDULES.get(options.schedule).for_run(
                weights.sparsity,
                1,
                initial_sparsity=options.initial_sparsity,
                begin=options.prune_begin,
                end=options.prune_end,
            )

    def _check_gate_data(self, name: str, limit, finetunes: list) -> None:
        field = name.replace("-", "_")
        if not finetunes and self.data is None:
            raise OptionError(
                f"{{{field}}} is measured on evaluation data; add {{data}} EVAL. "
                f"Received: {{{field}}} {limit} without {{data}}",
                field,
                "data",
            )
        tuning = finetunes[0] if finetunes else None
        if tuning is not None and tuning.val_data is None and tuning.val_split is None:
            raise OptionError(
                f"with {{finetune_epochs}}, {{{field}}} is measured on the validation data; "
                f"add {{val_data}} or {{val_split}}. Received: {{{field}}} {limit} without either",
                "finetune_epochs",
                field,
                "val_data",
                "val_split",
            )
        if tuning is not None and not isinstance(self.steps[-1], Finetune):
            # The last fine-tune step measured the model before the steps after it: measure the result again.
            if tuning.val_data is None:
                raise OptionError(
                    f"a pipeline that prunes after its last fine-tune step measures {{{field}}} on {{val_data}}; "
                    f"give {{val_data}} instead of {{val_split}}. Received: {{val_split}} {tuning.val_split}",
                    "val_data",
                    "val_split",
                    field,
                )
            data = tuning.val_data
        elif tuning is None:
            data = self.data
        else:
            return
        if self.evaluation is None:
            from prunectl.core.training.evaluate import EvalOptions

            reader = tuning.reader if tuning is not None else ()
            evaluation = EvalOptions(data, reader=reader, need_accuracy=True, need_metrics=gate_metrics(self.gates))
            object.__setattr__(self, "evaluation", evaluation)

    def weight_steps(self) -> list[WeightPruning]:
        """Every weight step, in order (those that run with a fine-tune step included)."""
        return [s for s in unfused(self.steps) if isinstance(s, WeightPruning)]

    def neuron_steps(self) -> list[NeuronPruning]:
        """Every structural step, in order."""
        return [s for s in self.steps if isinstance(s, NeuronPruning)]

    def tuning(self) -> FinetuneOptions | None:
        """The run's fine-tuning options (data, strategy...), or None when no step fine-tunes."""
        if self.target is not None:
            return self.finetune
        return next((s.options for s in self.steps if isinstance(s, Finetune)), None)

    def weights_only(self) -> WeightPruning | None:
        """The weight step when it is the whole pipeline (what the file engine can run), else None."""
        return self.steps[0] if len(self.steps) == 1 and isinstance(self.steps[0], WeightPruning) else None

    def data_aware(self) -> bool:
        """Whether a weight step scores weights on calibration data (wanda, sparsegpt)."""
        return any(w.criterion != "magnitude" for w in self.weight_steps())

    def _check_weight_criterion(self, weights: WeightPruning | None, finetune: FinetuneOptions | None) -> None:
        if weights is None:
            return
        name = weights.criterion
        if name == "magnitude":
            if weights.calibration_samples is not None:
                raise OptionError(
                    "{calibration_samples} is read by a data-aware {weight_criterion} (wanda or sparsegpt). "
                    f"Received: {{calibration_samples}} {weights.calibration_samples} with {{weight_criterion}} {name}",
                    "calibration_samples",
                    "weight_criterion",
                )
            return
        from prunectl.core.training.data_aware import check_step

        if self.data is None:
            raise OptionError(
                f"the {name} criterion scores weights on calibration inputs; give {{data}} FILE. "
                f"Received: {{weight_criterion}} {name} without {{data}}",
                "data",
                "weight_criterion",
            )
        if self.engine == "file":
            raise OptionError(
                f"the {name} criterion runs the model on its calibration data, which the file engine cannot; "
                f"use {{engine}} keras or auto. Received: {{weight_criterion}} {name} with {{engine}} file",
                "engine",
                "weight_criterion",
            )
        check_step(weights)
        if finetune is not None and finetune.schedule != "oneshot":
            schedule = finetune.schedule
            raise OptionError(
                f"the {name} criterion prunes once, before fine-tuning (the masks are then held); "
                f"use {{schedule}} oneshot. Received: {{weight_criterion}} {name} with {{schedule}} {schedule}",
                "schedule",
                "weight_criterion",
            )

    def explicit(self) -> bool:
        """Whether the steps were given in order (a recipe's or ``--step``'s), not as the flat options."""
        return self.steps != classic(self.neurons, self.weights, self.finetune)

    def pipeline(self, steps: tuple[Step, ...] | None = None) -> dict:
        """The fully resolved pipeline, keyed by option names: what ``--recipe-out`` writes back.

        The flat options' pipeline is written as before (steps without ``kind``, fine-tuning in
        ``[finetune]``); ordered steps are written in order, each with its ``kind``, a fine-tune step
        with only the values that differ from the run's ``[finetune]`` table.
        """
        tuning = self.tuning()
        finetune = step_config(Finetune(tuning)) if tuning else None
        if finetune:
            finetune.pop("kind")
        explicit = self.explicit() or steps is not None
        written = []
        for step in unfused(self.steps if steps is None else steps):
            config = step_config(step)
            if isinstance(step, Finetune):
                if explicit:
                    written.append({k: v for k, v in config.items() if k == "kind" or (finetune or {}).get(k) != v})
                continue
            if not explicit:
                config.pop("kind")
            written.append(config)
        options = {
            "compression": self.compression,
            "engine": self.engine,
            "keep-optimizer": self.keep_optimizer,
            "unsafe": self.unsafe,
            "benchmark": self.benchmark,
            **({"fold-batchnorm": True} if self.fold_batchnorm else {}),
            **gate_config(self.gates),
        }
        if self.data is not None and finetune is None:
            options["data"] = str(self.data)
        return {"options": options, "steps": written, "finetune": finetune}

    def _check_export(self) -> None:
        from prunectl.core.deploy.formats import check_quantize, export_format

        if self.export is None:
            if self.quantize is not None:
                raise OptionError(
                    "{quantize} needs {export}. Received: {quantize} " + str(self.quantize), "quantize", "export"
                )
            return
        fmt = export_format(self.export)
        try:
            check_quantize(fmt, self.quantize, self.data is not None)
        except OptionError as exc:  # the rule names format; here the format is --export's
            raise OptionError(
                exc.template.replace("{format}", "{export}").replace("format=", "export="), *exc.fields, "export"
            ) from None

    def options(self) -> dict:
        """The options as recorded in the report."""
        weights, neurons, tuning = (
            next(iter(self.weight_steps()), None),
            next(iter(self.neuron_steps()), None),
            self.tuning(),
        )
        return {
            **(weights.get_config() if weights else {}),
            "compression": self.compression,
            "engine": self.engine,
            "force": self.force,
            "unsafe": self.unsafe,
            "keep_optimizer": self.keep_optimizer,
            "gates": gate_config(self.gates),
            **({"finetune": tuning.get_config()} if tuning else {}),
            **(
                {k if k != "layers" else "neuron_layers": v for k, v in neurons.get_config().items()} if neurons else {}
            ),
            "data": str(self.data) if self.data else None,
            "benchmark": self.benchmark,
            "fold_batchnorm": self.fold_batchnorm,
            **({"export": self.export, "quantize": self.quantize} if self.export else {}),
            "evaluation_data": str(self.evaluation.data) if self.evaluation else None,
            **({"steps": [step_config(s) for s in unfused(self.steps)]} if self.explicit() else {}),
            **({"target": self.target.get_config(), "stages": self.search_stages()} if self.target else {}),
        }

    def needs_keras(self) -> bool:
        """Whether a step must run on a live Keras model."""
        return (
            self.weights_only() is None
            or self.benchmark
            or self.fold_batchnorm
            or self.evaluation is not None
            or self.data_aware()
        )


def finetune_defaults() -> dict:
    """Each fine-tuning option that refines ``finetune_epochs``, by parameter name, with its default."""
    from prunectl.core.training.finetune import FinetuneOptions

    out = {}
    for field in fields(FinetuneOptions):
        if field.name == "reader":
            out.update(dict.fromkeys(READER_KEYS))
        elif field.name not in ("data", "epochs"):
            out[field.name] = field.default
    return out


def _neuron_step(values: Mapping, dry_run: bool) -> NeuronPruning | None:
    threshold, ratio = values.get("neuron_threshold"), values.get("neuron_ratio")
    if threshold is not None and ratio is not None:
        raise OptionError(
            "give only one of {neuron_threshold} and {neuron_ratio}. "
            f"Received: {{neuron_threshold}} {threshold} {{neuron_ratio}} {ratio}",
            "neuron_threshold",
            "neuron_ratio",
        )
    if threshold is None and ratio is None:
        given = [
            (name, values.get(name))
            for name in ("neuron_criterion", "round_to", "min_keep", "norms", "prune_residual")
            if values.get(name) not in (None, False)
        ]
        if given:
            # A flag (True) shows as itself, a value after its option.
            shown = " ".join(f"{{{n}}}" if v is True else f"{{{n}}} {v}" for n, v in given) + (
                " {dry_run}" if dry_run else ""
            )
            raise OptionError(
                f"{{{given[0][0]}}} needs {{neuron_threshold}} or {{neuron_ratio}}. Received: {shown}",
                given[0][0],
                "neuron_threshold",
                "neuron_ratio",
                "dry_run",
                *(n for n, _ in given[1:]),
            )
        return None
    return NeuronPruning(
        criterion=values.get("neuron_criterion") or "l1",
        threshold=threshold,
        ratio=ratio,
        scope=values.get("scope", "layer"),
        round_to=values.get("round_to") or 1,
        include=tuple(values.get("include", ())),
        exclude=tuple(values.get("exclude", ())),
        layers=tuple(values.get("layers", ())),
        # Left out when not given, so NeuronPruning's defaults apply.
        **{name: values[name] for name in ("min_keep", "norms", "prune_residual") if values.get(name) is not None},
    )


def _finetune(values: Mapping) -> FinetuneOptions | None:
    epochs = values.get("finetune_epochs")
    defaults = finetune_defaults()
    if epochs is None:
        given = [name for name, default in defaults.items() if values.get(name, default) not in (default, ())]
        if given:
            raise OptionError(
                f"{{{given[0]}}} needs {{finetune_epochs}}. Received: {{{given[0]}}} without {{finetune_epochs}}",
                given[0],
                "finetune_epochs",
            )
        return None
    if values.get("data") is None:
        raise OptionError(
            f"{{finetune_epochs}} needs {{data}}. Received: {{finetune_epochs}} {epochs} without {{data}}",
            "finetune_epochs",
            "data",
        )
    from prunectl.core.training.finetune import FinetuneOptions

    chosen = {name: values.get(name, default) for name, default in defaults.items()}
    reader = tuple((k, chosen.pop(k)) for k in READER_KEYS if chosen.get(k) is not None)
    for key in READER_KEYS:
        chosen.pop(key, None)
    chosen["metrics"] = tuple(chosen["metrics"] or ())
    return FinetuneOptions(data=values["data"], epochs=epochs, reader=reader, **chosen)


def _weight_step(weights: Mapping, values: Mapping) -> WeightPruning | None:
    threshold, sparsity = weights.get("threshold"), weights.get("sparsity")
    if threshold is not None and sparsity is not None:
        raise OptionError(
            f"give only one of {{threshold}} and {{sparsity}}. "
            f"Received: {{threshold}} {threshold} {{sparsity}} {sparsity}",
            "threshold",
            "sparsity",
        )
    pattern = pattern_of(weights.get("pattern"), weights.get("block"))
    if threshold is None and sparsity is None and pattern is None:
        return None
    return WeightPruning(
        threshold=threshold,
        sparsity=sparsity,
        scope=weights.get("scope", "layer"),
        include=tuple(weights.get("include", ())),
        exclude=tuple(weights.get("exclude", ())),
        layers=tuple(weights.get("layers", ())),
        pattern=pattern,
        criterion=weights.get("weight_criterion") or "magnitude",
        calibration_samples=weights.get("calibration_samples", values.get("calibration_samples")),
    )


#: One ordered step as option values: its kind, its values keyed by parameter name, and its iterations.
StepValues = tuple[str, Mapping, int]


def _ordered_steps(values: Mapping, steps: list[StepValues], finetune: FinetuneOptions | None) -> tuple[Step, ...]:
    """The ordered steps, each split into its stages with the run's fine-tuning between them.

    A kind the steps lack but the flat options give (``--sparsity`` beside a recipe of structural
    steps) is added where the flat pipeline has it; without a fine-tune step, the run's
    fine-tuning options (``[finetune]``, ``--finetune-epochs``) fine-tune at the end, as before.
    """
    kinds = {kind for kind, _, _ in steps}
    built: list[Step] = []
    flat_neurons = _neuron_step(values, False) if "neurons" not in kinds else None
    if flat_neurons is not None:
        built.append(flat_neurons)
    for index, (kind, step_values, iterations) in enumerate(steps, start=1):
        step: Step | None
        if kind == "neurons":
            step = _neuron_step(step_values, False)
        elif kind == "weights":
            step = _weight_step(step_values, values)
        else:
            options = _finetune({**values, **step_values})
            if options is None:
                raise OptionError(
                    f"fine-tune step {index} needs {{finetune_epochs}} (in the step or the run's fine-tuning "
                    "options). Received: a fine-tune step without it",
                    "finetune_epochs",
                )
            step = Finetune(options)
        if step is None:
            raise OptionError(
                f"step {index} ({kind}) prunes nothing: give it {{neuron_ratio}} or {{neuron_threshold}}"
                if kind == "neurons"
                else f"step {index} ({kind}) prunes nothing: give it {{threshold}}, {{sparsity}} or {{pattern}}"
                + ". Received: none",
                *(("neuron_ratio", "neuron_threshold") if kind == "neurons" else ("threshold", "sparsity", "pattern")),
            )
        stages = split(step, iterations)
        if len(stages) > 1 and finetune is None:
            raise OptionError(
                f"step {index} has iterations = {iterations}: its stages are fine-tuned in between; give "
                "{finetune_epochs} and {data} (or a [finetune] table). Received: no fine-tuning options",
                "finetune_epochs",
                "data",
            )
        for number, stage in enumerate(stages):
            if number:
                built.append(Finetune(finetune))  # type: ignore[arg-type]  # checked above
            built.append(stage)
    flat_weights = _weight_step(values, values) if "weights" not in kinds else None
    if flat_weights is not None:
        built.append(flat_weights)
    if "finetune" not in kinds and finetune is not None:
        built.append(Finetune(finetune))
    return fuse(built)


def build_request(
    values: Mapping,
    weights: Mapping | None = None,
    structural: Mapping | None = None,
    steps: list[StepValues] | None = None,
) -> PruneRequest:
    """Fold flat option values into one checked :class:`PruneRequest`.

    Args:
        values: option values keyed by the ``prune`` command's parameter names
            (``threshold``, ``neuron_ratio``, ``finetune_epochs``, ``report_path``...);
            a missing key takes the option's default.
        weights: the weight step's ``threshold``/``sparsity``/``scope``/``include``/``exclude``/``layers``,
            when they differ from ``values`` (a recipe's step); default: ``values``.
        structural: the structural step's values likewise.
        steps: ordered steps (a recipe's or ``--step``'s), each ``(kind, values, iterations)``; then
            ``weights`` and ``structural`` are not used.

    Returns:
        The request, every rule checked.

    Raises:
        OptionError: a bad value or a combination of options that contradict each other,
            naming the offending fields.
    """
    markdown = values.get("markdown")
    check_stdout(values.get("as_json", False), markdown)
    finetune = _finetune(values)
    common = dict(
        model=values["model"],
        output=values.get("output"),
        report=values.get("report_path"),
        compression=values.get("compression", DEFAULT_COMPRESSION),
        engine=values.get("engine", "auto"),
        force=bool(values.get("force")),
        unsafe=bool(values.get("unsafe")),
        keep_optimizer=bool(values.get("keep_optimizer")),
        data=values.get("data"),
        dry_run=bool(values.get("dry_run")),
        benchmark=bool(values.get("benchmark")),
        fold_batchnorm=bool(values.get("fold_batchnorm")),
        gates=gate_pairs(values),
        markdown=None if markdown is None or str(markdown) == "-" else Path(markdown),
        finetune=finetune,
        recipe=values.get("recipe"),
        recipe_out=values.get("recipe_out"),
        export=values.get("export"),
        quantize=values.get("quantize"),
    )
    if values.get("target") is not None:
        from prunectl.core.run.search import parse_target

        target = parse_target(values["target"])
        if steps or _neuron_step(values, False) is not None or _weight_step(values, values) is not None:
            raise OptionError(
                f"{{target}} chooses the steps itself; give no {{threshold}}, {{sparsity}}, {{neuron_ratio}} or "
                f"{{step}} with it. Received: {{target}} {target.text} with a step",
                "target",
                "threshold",
                "sparsity",
                "neuron_ratio",
                "step",
            )
        return PruneRequest(**common, target=target, stages=values.get("stages"))
    if steps is not None:
        return PruneRequest(**common, steps=_ordered_steps(values, steps, finetune))
    weights = values if weights is None else weights
    structural = values if structural is None else structural
    return PruneRequest(
        **common, weights=_weight_step(weights, values), neurons=_neuron_step(structural, bool(values.get("dry_run")))
    )
