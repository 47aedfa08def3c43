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
from prunectl.core.options import COMPRESSION_LEVELS, DEFAULT_COMPRESSION, ENGINES, check_stdout
from prunectl.core.run.gates import GATES, gate_config, gate_metrics, gate_pairs
from prunectl.core.structure.criteria import CRITERIA
from prunectl.core.structure.plan import NeuronPruning
from prunectl.core.weights.prune import WeightPruning, pattern_of

if TYPE_CHECKING:
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
        compression: a key of ``options.COMPRESSION_LEVELS``.
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
        evaluation: evaluate the model before and after the steps on this data (for
            gates that need accuracy); fine-tuning evaluates on its own validation data.
            Derived from ``data`` when a data gate needs it and none is given.
        recipe: the recipe file the request was read from, if any (recorded in the report).
        recipe_out: write the resolved pipeline here as a recipe (checked with the other outputs).

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
    evaluation: EvalOptions | None = None
    recipe: Path | None = None
    recipe_out: Path | None = None

    def __post_init__(self):
        if self.compression not in COMPRESSION_LEVELS:
            raise OptionError(
                f"{{compression}} must be one of {', '.join(COMPRESSION_LEVELS)}. "
                f"Received: compression={self.compression!r}",
                "compression",
            )
        if self.engine not in ENGINES:
            raise OptionError(f"engine must be one of {', '.join(ENGINES)}. Received: engine={self.engine!r}")
        for name, limit in self.gates:
            GATES.get(name)(limit)
        if self.finetune is not None:
            from prunectl.core.training.distribute import check_cluster

            check_cluster(self.finetune.strategy)  # before TensorFlow is imported, which reads TF_CONFIG
        if self.dry_run and self.neurons is None:
            raise OptionError(
                "{dry_run} needs {neuron_threshold} or {neuron_ratio}. Received: {dry_run}",
                "dry_run",
                "neuron_threshold",
                "neuron_ratio",
            )
        self._check_weight_criterion()
        criterion = self.neurons.criterion if self.neurons else None
        if criterion and CRITERIA.get(criterion).needs_data and self.data is None:
            raise OptionError(
                f"the {criterion} criterion needs calibration data; give {{data}} FILE. "
                f"Received: {{neuron_criterion}} {criterion}",
                "data",
                "neuron_criterion",
            )
        needing = [(name, limit) for name, limit in self.gates if GATES.get(name).needs_data]
        if needing:
            name, limit = needing[0]
            field = name.replace("-", "_")
            if self.finetune is None and self.data is None:
                raise OptionError(
                    f"{{{field}}} is measured on evaluation data; add {{data}} EVAL. "
                    f"Received: {{{field}}} {limit} without {{data}}",
                    field,
                    "data",
                )
            if self.finetune is None and self.evaluation is None:
                from prunectl.core.training.evaluate import EvalOptions

                evaluation = EvalOptions(self.data, need_accuracy=True, need_metrics=gate_metrics(self.gates))
                object.__setattr__(self, "evaluation", evaluation)
            if self.finetune is not None and self.finetune.val_data is None and self.finetune.val_split is None:
                raise OptionError(
                    f"with {{finetune_epochs}}, {{{field}}} is measured on the validation data; "
                    f"add {{val_data}} or {{val_split}}. Received: {{{field}}} {limit} without either",
                    "finetune_epochs",
                    field,
                    "val_data",
                    "val_split",
                )
        reads_data = (
            self.finetune is not None
            or self.benchmark
            or needing
            or (criterion is not None and CRITERIA.get(criterion).needs_data)
            or self.data_aware()
        )
        if self.data is not None and not reads_data:
            raise OptionError(
                "{data} is read by {finetune_epochs}, an activation criterion, a data-aware {weight_criterion}, "
                "{benchmark} or "
                f"{{max_accuracy_drop}}. Received: {{data}} {self.data} without any of them",
                "data",
                "finetune_epochs",
                "weight_criterion",
                "benchmark",
                "max_accuracy_drop",
            )
        trains_with_l1 = self.finetune is not None and self.finetune.l1 > 0 and self.finetune.epochs > 0
        # Training with an L1 penalty alone is a step of its own (sparsity by L1, pruned by a later run).
        if self.weights is None and self.neurons is None and not trains_with_l1:
            raise OptionError(
                "give a pruning step: {threshold}, {sparsity}, {neuron_threshold} or "
                "{neuron_ratio} (or a {recipe}). Received: none",
                "threshold",
                "sparsity",
                "neuron_threshold",
                "neuron_ratio",
                "recipe",
            )
        pattern = self.weights.pattern if self.weights is not None else None
        if self.finetune is not None and self.finetune.schedule != "oneshot" and pattern and pattern.kind == "nm":
            raise OptionError(
                f"an N:M pattern holds {pattern.a} zeros in every group of {pattern.b} from the start, so "
                f"{{schedule}} {self.finetune.schedule} cannot raise its sparsity step by step; use {{schedule}} "
                f"oneshot. Received: {{schedule}} {self.finetune.schedule} {{pattern}} {pattern.label}",
                "schedule",
                "pattern",
            )
        if (
            self.finetune is not None
            and self.finetune.schedule != "oneshot"
            and (self.weights is None or self.weights.sparsity is None)
        ):
            schedule = self.finetune.schedule
            raise OptionError(
                f"{{schedule}} {schedule} prunes to a sparsity; give {{sparsity}}. "
                f"Received: {{schedule}} {schedule} with {{threshold}}",
                "schedule",
                "sparsity",
                "threshold",
            )
        if self.finetune is not None and self.weights is not None and self.weights.sparsity is not None:
            from prunectl.core.weights.schedules import SCHEDULES

            # The schedule's own checks (initial sparsity, window), here rather than after the model is loaded.
            SCHEDULES.get(self.finetune.schedule).for_run(
                self.weights.sparsity,
                1,
                initial_sparsity=self.finetune.initial_sparsity,
                begin=self.finetune.prune_begin,
                end=self.finetune.prune_end,
            )

    def data_aware(self) -> bool:
        """Whether the weight step scores weights on calibration data (wanda, sparsegpt)."""
        return self.weights is not None and self.weights.criterion != "magnitude"

    def _check_weight_criterion(self) -> None:
        weights = self.weights
        if weights is None:
            return
        name = weights.criterion
        if not self.data_aware():
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
        if self.finetune is not None and self.finetune.schedule != "oneshot":
            schedule = self.finetune.schedule
            raise OptionError(
                f"the {name} criterion prunes once, before fine-tuning (the masks are then held); "
                f"use {{schedule}} oneshot. Received: {{weight_criterion}} {name} with {{schedule}} {schedule}",
                "schedule",
                "weight_criterion",
            )

    def pipeline(self) -> dict:
        """The fully resolved pipeline, keyed by option names: what ``--recipe-out`` writes back."""

        def kebab(config: dict) -> dict:
            return {k.replace("_", "-"): v for k, v in config.items()}

        steps = []
        if self.neurons:
            steps.append(kebab(self.neurons.get_config()))
        if self.weights:
            config = self.weights.get_config()
            steps.append({**kebab({k: v for k, v in config.items() if k != "layers"}), "layers": config["layers"]})
        finetune = None
        if self.finetune:
            config = self.finetune.get_config()
            config.update(config.pop("reader"))
            finetune = kebab({"finetune_epochs": config.pop("epochs"), **config})
        options = {
            "compression": self.compression,
            "engine": self.engine,
            "keep-optimizer": self.keep_optimizer,
            "unsafe": self.unsafe,
            "benchmark": self.benchmark,
            **gate_config(self.gates),
        }
        if self.data is not None and finetune is None:
            options["data"] = str(self.data)
        return {"options": options, "steps": steps, "finetune": finetune}

    def options(self) -> dict:
        """The options as recorded in the report."""
        return {
            **(self.weights.get_config() if self.weights else {}),
            "compression": self.compression,
            "engine": self.engine,
            "force": self.force,
            "unsafe": self.unsafe,
            "keep_optimizer": self.keep_optimizer,
            "gates": gate_config(self.gates),
            **({"finetune": self.finetune.get_config()} if self.finetune else {}),
            **(
                {k if k != "layers" else "neuron_layers": v for k, v in self.neurons.get_config().items()}
                if self.neurons
                else {}
            ),
            "data": str(self.data) if self.data else None,
            "benchmark": self.benchmark,
            "evaluation_data": str(self.evaluation.data) if self.evaluation else None,
        }

    def needs_keras(self) -> bool:
        """Whether a step must run on a live Keras model."""
        return (
            self.finetune is not None
            or self.neurons is not None
            or self.benchmark
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


def build_request(values: Mapping, weights: Mapping | None = None, structural: Mapping | None = None) -> PruneRequest:
    """Fold flat option values into one checked :class:`PruneRequest`.

    Args:
        values: option values keyed by the ``prune`` command's parameter names
            (``threshold``, ``neuron_ratio``, ``finetune_epochs``, ``report_path``...);
            a missing key takes the option's default.
        weights: the weight step's ``threshold``/``sparsity``/``scope``/``include``/``exclude``/``layers``,
            when they differ from ``values`` (a recipe's step); default: ``values``.
        structural: the structural step's values likewise.

    Returns:
        The request, every rule checked.

    Raises:
        OptionError: a bad value or a combination of options that contradict each other,
            naming the offending fields.
    """
    weights = values if weights is None else weights
    structural = values if structural is None else structural
    markdown = values.get("markdown")
    check_stdout(values.get("as_json", False), markdown)
    threshold, sparsity = weights.get("threshold"), weights.get("sparsity")
    if threshold is not None and sparsity is not None:
        raise OptionError(
            f"give only one of {{threshold}} and {{sparsity}}. "
            f"Received: {{threshold}} {threshold} {{sparsity}} {sparsity}",
            "threshold",
            "sparsity",
        )
    neurons = _neuron_step(structural, bool(values.get("dry_run")))
    gates = gate_pairs(values)
    finetune = _finetune(values)
    pattern = pattern_of(weights.get("pattern"), weights.get("block"))
    step = (
        None
        if threshold is None and sparsity is None and pattern is None
        else WeightPruning(
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
    )
    return PruneRequest(
        model=values["model"],
        weights=step,
        output=values.get("output"),
        report=values.get("report_path"),
        compression=values.get("compression", DEFAULT_COMPRESSION),
        engine=values.get("engine", "auto"),
        force=bool(values.get("force")),
        unsafe=bool(values.get("unsafe")),
        keep_optimizer=bool(values.get("keep_optimizer")),
        neurons=neurons,
        data=values.get("data"),
        dry_run=bool(values.get("dry_run")),
        benchmark=bool(values.get("benchmark")),
        gates=gates,
        markdown=None if markdown is None or str(markdown) == "-" else Path(markdown),
        finetune=finetune,
        recipe=values.get("recipe"),
        recipe_out=values.get("recipe_out"),
    )
