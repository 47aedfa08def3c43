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
from dataclasses import dataclass, field
from pathlib import Path

from prunectl.core.atomic import check_output, write_text_atomic
from prunectl.core.errors import OptionError, OutputError
from prunectl.core.modelfile import H5_SUFFIXES, KERAS_SUFFIX, ModelFile, model_format, open_model_file
from prunectl.core.modelwriter import Progress, WeightCounts
from prunectl.core.options import COMPRESSION_LEVELS, DEFAULT_COMPRESSION, ENGINES
from prunectl.core.prune import WeightPruning, WeightResult, prune_file, prune_keras_model
from prunectl.core.report import plan_report, prune_report, to_json
from prunectl.core.structural import NeuronPruning


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
        neurons: the structural step (removes units before weights are pruned), or None.
        data: a data file whose inputs calibrate activation criteria and feed ``benchmark``.
        dry_run: plan the structural step and return its report; write nothing.
        benchmark: time the original and the pruned model on the same batch.
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
    neurons: NeuronPruning | None = None
    data: Path | None = None
    dry_run: bool = False
    benchmark: bool = False

    def options(self) -> dict:
        """The options as recorded in the report."""
        return {
            **(self.weights.get_config() if self.weights else {}),
            "compression": self.compression,
            "engine": self.engine,
            "force": self.force,
            "unsafe": self.unsafe,
            "keep_optimizer": self.keep_optimizer,
            **(self.neurons.get_config() if self.neurons else {}),
            "data": str(self.data) if self.data else None,
            "benchmark": self.benchmark,
        }

    def needs_keras(self) -> bool:
        """Whether a step must run on a live Keras model."""
        return self.neurons is not None or self.benchmark


@dataclass
class PruneOutcome:
    """Everything a report needs about one prune run."""

    engine: str
    results: dict[str, WeightResult]
    counts: WeightCounts
    seconds: float
    notes: list[str] = field(default_factory=list)
    structural: dict | None = None
    benchmark: dict | None = None


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


def _run_keras(request: PruneRequest, model: ModelFile, target: Path, progress: Progress | None) -> PruneOutcome:
    from prunectl.core import keras_io, structural
    from prunectl.core.cost import benchmark

    start = time.perf_counter()
    loaded = keras_io.load_model(model, unsafe=request.unsafe)
    notes = list(loaded.notes)
    if request.keep_optimizer:
        notes.append("optimizer state is not carried by the keras engine")
    model, plan, x = loaded.model, None, None
    if request.data:
        x = structural.calibration_inputs(request.data, model)
    if request.neurons:
        plan = structural.plan_structure(model, request.neurons, x)
        model = structural.apply_plan(model, plan)
        if loaded.compile_spec and loaded.compile_spec.loss is not None:
            notes += keras_io.compile_model(model, loaded.compile_spec)
    results = prune_keras_model(model, request.weights) if request.weights else {}
    counts = keras_io.save_compressed(model, target, COMPRESSION_LEVELS[request.compression], progress=progress)
    timing = benchmark(loaded.model, model, x) if request.benchmark else None
    return PruneOutcome("keras", results, counts, time.perf_counter() - start, notes,
                        plan.to_dict() if plan else None, timing)


def _plan_only(request: PruneRequest, model: ModelFile) -> dict:
    from prunectl.core import keras_io, structural

    loaded = keras_io.load_model(model, unsafe=request.unsafe)
    x = structural.calibration_inputs(request.data, loaded.model) if request.data else None
    return plan_report(model, request.options(), structural.plan_structure(loaded.model, request.neurons, x))


def run_prune(request: PruneRequest, progress: Progress | None = None) -> dict:
    """Run one prune job and return its report (also written to disk).

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
    output = request.output or default_output(request.model)
    if output.suffix.lower() not in H5_SUFFIXES + (KERAS_SUFFIX,):
        raise OutputError(f"output must end in .h5, .hdf5 or .keras. Received: {str(output)!r}")
    report_path = request.report or default_report(output)
    with open_model_file(request.model) as model:
        if request.dry_run:
            return _plan_only(request, model)
        check_output(output, request.force, inputs=(request.model,))
        check_output(report_path, request.force, inputs=(request.model,))
        if report_path.resolve() == output.resolve():
            raise OutputError(f"report path is the output model's path. Received: {str(report_path)!r}")
        engine = choose_engine(request, output)
        run = _run_file if engine == "file" else _run_keras
        outcome = run(request, model, output, progress)
        report = prune_report(outcome, model, output, request.options())
    report["report_path"] = str(report_path)
    write_text_atomic(report_path, to_json(report))
    return report
