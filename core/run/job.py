"""The ``prune`` job end to end: check paths, run the steps, write the model and its report.

Data flows one way: open (validate) -> check outputs -> prune -> write the model
-> build the report -> write the report. Nothing is written until the input and
every output path have been checked, and each file is written atomically, so a
failure leaves no output behind.

Two engines run the steps. The ``file`` engine (weight steps only, same format)
reads and writes weights with h5py and never imports TensorFlow. The ``keras``
engine loads the model in Keras, runs the steps on the live model, and saves it;
steps that change the model's structure or train it run there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from prunectl.core.io.atomic import check_output, write_text_atomic
from prunectl.core.errors import OptionError, OutputError
from prunectl.core.run.gates import GATES
from prunectl.core.run.markdown import report_markdown
from prunectl.core.io.modelfile import H5_SUFFIXES, KERAS_SUFFIX, ModelFile, model_format, open_model_file
from prunectl.core.io.writer import Progress, save_keras_model
from prunectl.core.weights.catalog import WeightCounts
from prunectl.core.options import COMPRESSION_LEVELS, DEFAULT_COMPRESSION, ENGINES
from prunectl.core.weights.prune import WeightPruning, WeightResult, prune_file, prune_keras_model
from prunectl.core.run.report import plan_report, prune_report, to_json
from prunectl.core.structure.plan import NeuronPruning

if TYPE_CHECKING:
    from prunectl.core.training.evaluate import EvalOptions
    from prunectl.core.training.finetune import FinetuneOptions, TrainingProgress


@dataclass(frozen=True)
class PruneRequest:
    """Everything one ``prune`` run needs; built by the CLI, read by :func:`run_prune`.

    Attributes:
        model: the input model path (never modified).
        weights: the weight-pruning step, or None.
        output: output model path (default: ``<stem>.pruned<suffix>`` beside the input).
        report: report path (default: ``<output stem>.report.json`` beside the output).
        compression: a key of ``options.COMPRESSION_LEVELS``.
        engine: ``auto``, ``file`` or ``keras``.
        force: replace existing outputs.
        unsafe: allow Lambda-layer code to be deserialized by the Keras engine.
        keep_optimizer: keep the optimizer's saved state in the output (file engine).
        recipe: the recipe file the request was read from, if any (recorded in the report).
        gates: ``(gate name, limit)`` pairs checked against the report (see ``core.gates``).
        markdown: also write the report as Markdown here.
        finetune: fine-tune after pruning (Keras engine), or None.
        neurons: the structural step (removes units before weights are pruned), or None.
        data: a data file whose inputs calibrate activation criteria and feed ``benchmark``
            (fine-tuning reads its own copy of the path from ``finetune``).
        dry_run: plan the structural step and return its report; write nothing.
        benchmark: time the original and the pruned model on the same batch.
        evaluation: evaluate the model before and after the steps on this data (for
            gates that need accuracy); fine-tuning evaluates on its own validation data.
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
        options = {"compression": self.compression, "engine": self.engine, "keep-optimizer": self.keep_optimizer,
                   "unsafe": self.unsafe, "benchmark": self.benchmark, **dict(self.gates)}
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
            "gates": dict(self.gates),
            **({"finetune": self.finetune.get_config()} if self.finetune else {}),
            **(self.neurons.get_config() if self.neurons else {}),
            "data": str(self.data) if self.data else None,
            "benchmark": self.benchmark,
            "evaluation_data": str(self.evaluation.data) if self.evaluation else None,
        }

    def needs_keras(self) -> bool:
        """Whether a step must run on a live Keras model."""
        return self.finetune is not None or self.neurons is not None or self.benchmark or self.evaluation is not None


@dataclass
class PruneOutcome:
    """Everything a report needs about one prune run."""

    engine: str
    results: dict[str, WeightResult]
    counts: WeightCounts
    seconds: float
    notes: list[str] = field(default_factory=list)
    finetune: dict | None = None
    structural: dict | None = None
    benchmark: dict | None = None
    evaluation: dict | None = None


def default_output(model: Path) -> Path:
    """``model.h5`` -> ``model.pruned.h5`` beside it."""
    return model.with_name(f"{model.stem}.pruned{model.suffix}")


def default_report(output: Path) -> Path:
    """``model.pruned.h5`` -> ``model.pruned.report.json`` beside it."""
    return output.with_name(f"{output.stem}.report.json")


def choose_engine(request: PruneRequest, target: Path) -> str:
    """Resolve ``auto``: the file engine unless the format changes or a step needs Keras.

    Raises:
        OptionError: ``file`` was asked for where it cannot run.
    """
    if request.engine not in ENGINES:
        raise OptionError(f"engine must be one of {', '.join(ENGINES)}. Received: engine={request.engine!r}")
    converting = model_format(request.model) != model_format(target)
    if request.engine == "file" and converting:
        raise OptionError(
            "the file engine cannot convert between .h5 and .keras; use --engine keras or auto. "
            f"Received: {request.model.suffix} -> {target.suffix}"
        )
    if request.engine == "file" and request.needs_keras():
        raise OptionError("the file engine runs weight steps only; use --engine keras or auto. Received: --engine file")
    if request.engine == "auto":
        return "keras" if converting or request.needs_keras() else "file"
    return request.engine


def _run_file(request: PruneRequest, model: ModelFile, target: Path, progress: Progress | None) -> PruneOutcome:
    start = time.perf_counter()
    results, counts = prune_file(model, target, request.weights, COMPRESSION_LEVELS[request.compression],
                                 request.keep_optimizer, progress)
    return PruneOutcome("file", results, counts, time.perf_counter() - start)


def _run_keras(request: PruneRequest, model: ModelFile, target: Path, progress: Progress | None,
               training: TrainingProgress | None = None) -> PruneOutcome:
    from prunectl.core.io import keras_io
    from prunectl.core.structure import plan as structural
    from prunectl.core.structure.cost import benchmark
    from prunectl.core.training.data import calibration_inputs
    from prunectl.core.training.distribute import strategy_scope
    from prunectl.core.training.evaluate import Evaluator, evaluation_block, finetune_evaluation

    start = time.perf_counter()
    finetuned, plan, timing, x, evaluate, evaluation = None, None, None, None, None, None
    # The model, the masks and the optimizer must all be created in the strategy's scope.
    with strategy_scope(request.finetune.strategy if request.finetune else "default"):
        loaded = keras_io.load_model(model, unsafe=request.unsafe)
        original = loaded.model
        notes = list(loaded.notes)
        if request.keep_optimizer:
            notes.append("optimizer state is not carried by the keras engine")
        if request.data and (request.neurons or request.benchmark):
            x = calibration_inputs(request.data, original)
        if request.evaluation is not None:
            evaluate = Evaluator(loaded, request.evaluation)
            before = evaluate(original)
        if request.neurons:  # neurons first, then weights, then fine-tuning
            plan = structural.plan_structure(original, request.neurons, x)
            loaded = replace(loaded, model=structural.apply_plan(original, plan))
            if loaded.compile_spec and loaded.compile_spec.loss is not None:
                notes += keras_io.compile_model(loaded.model, loaded.compile_spec)
        if request.finetune:
            from prunectl.core.training.finetune import finetune_model

            finetuned = finetune_model(loaded, request.weights, request.finetune, training,
                                       original=original if request.neurons else None)
            results = finetuned.results
            notes += finetuned.notes
        else:
            results = prune_keras_model(loaded.model, request.weights) if request.weights else {}
        if evaluate is not None:
            evaluation = evaluation_block(evaluate.describe(), ("before pruning", before),
                                          ("after pruning", evaluate(loaded.model)))
        elif finetuned is not None:
            evaluation = finetune_evaluation(finetuned.report)
        written: list[WeightCounts] = []

        def count(saved: ModelFile):
            written.append(WeightCounts.of(saved))
            return written[0].counting()

        save_keras_model(loaded.model, target, COMPRESSION_LEVELS[request.compression], count, progress=progress)
        counts = written[0]
        if request.benchmark:
            timing = benchmark(original, loaded.model, x)
    return PruneOutcome("keras", results, counts, time.perf_counter() - start, notes,
                        finetuned.report if finetuned else None, plan.to_dict() if plan else None, timing,
                        evaluation)


def _plan_only(request: PruneRequest, model: ModelFile) -> dict:
    from prunectl.core.io import keras_io
    from prunectl.core.structure import plan as structural
    from prunectl.core.training.data import calibration_inputs

    loaded = keras_io.load_model(model, unsafe=request.unsafe)
    x = calibration_inputs(request.data, loaded.model) if request.data else None
    return plan_report(model, request.options(), structural.plan_structure(loaded.model, request.neurons, x))


def run_prune(request: PruneRequest, progress: Progress | None = None,
              training: TrainingProgress | None = None) -> dict:
    """Run one prune job and return its report (also written to disk).

    Args:
        request: what to do.
        progress: called as each weight tensor is written.
        training: called at the end of every fine-tuning step and epoch.

    Raises:
        PrunectlError: any problem with the input, the options or the outputs;
            nothing has been written when it is raised.
        OptionError: ``dry_run`` without a structural step.
    """
    if request.dry_run and request.neurons is None:
        raise OptionError("a dry run plans structural pruning; give neuron_threshold or neuron_ratio. "
                          "Received: dry_run=True")
    if request.compression not in COMPRESSION_LEVELS:
        raise OptionError(
            f"compression must be one of {', '.join(COMPRESSION_LEVELS)}. "
            f"Received: compression={request.compression!r}"
        )
    with open_model_file(request.model) as model:
        if request.dry_run:
            return _plan_only(request, model)
        output = request.output or default_output(request.model)
        if output.suffix.lower() not in H5_SUFFIXES + (KERAS_SUFFIX,):
            raise OutputError(f"output must end in .h5, .hdf5 or .keras. Received: {str(output)!r}")
        report_path = request.report or default_report(output)
        check_output(output, request.force, inputs=(request.model,))
        check_output(report_path, request.force, inputs=(request.model,))
        if report_path.resolve() == output.resolve():
            raise OutputError(f"report path is the output model's path. Received: {str(report_path)!r}")
        if request.markdown is not None:
            check_output(request.markdown, request.force, inputs=(request.model, output, report_path))
            if request.markdown.resolve() in (output.resolve(), report_path.resolve()):
                raise OutputError(f"markdown path is another output's path. Received: {str(request.markdown)!r}")
        gates = [GATES.get(name)(limit) for name, limit in request.gates]
        engine = choose_engine(request, output)
        outcome = (_run_file(request, model, output, progress) if engine == "file"
                   else _run_keras(request, model, output, progress, training))
        report = prune_report(outcome, model, output, request.options())
    report["report_path"] = str(report_path)
    report["pipeline"] = {"recipe": str(request.recipe) if request.recipe else None, **request.pipeline()}
    report["gates"] = [gate.check(report).to_dict() for gate in gates]
    write_text_atomic(report_path, to_json(report))
    if request.markdown is not None:
        write_text_atomic(request.markdown, report_markdown(report))
    return report
