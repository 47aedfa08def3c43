"""The ``prune`` job end to end: check paths, run the steps, write the model and its report.

Data flows one way: open (validate) -> check outputs -> prune -> write the model
-> build the report -> write the report. Nothing is written until the input and
every output path have been checked, and each file is written atomically, so a
failure leaves no output behind.

Two engines run the steps. The ``file`` engine (weight steps only, same format)
reads and writes weights with h5py and never imports TensorFlow. The ``keras``
engine loads the model in Keras, runs the steps on the live model, and saves it;
steps that change the model's structure or train it run there. A structural
step alone, ``.keras`` to ``.keras``, is written as the input file edited
(``core/structure/rewrite.py``): the same model, without rebuilding and
re-saving it in Keras.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from prunectl.core.errors import OptionError, OutputError, StructureError, shown_names
from prunectl.core.io.agreement import check_agreement
from prunectl.core.io.atomic import check_distinct, check_output, same_file, write_text_atomic
from prunectl.core.io.modelfile import H5_SUFFIXES, KERAS_SUFFIX, ModelFile, model_format, open_model_file
from prunectl.core.io.writer import Progress, save_keras_model, write_model
from prunectl.core.run.export import check_export, export_pruned
from prunectl.core.run.gates import GATES
from prunectl.core.run.markdown import report_markdown
from prunectl.core.run.outcome import PruneOutcome
from prunectl.core.run.pipeline import fuse
from prunectl.core.run.report import PlanReport, PruneReport, plan_report, prune_report
from prunectl.core.run.request import PruneRequest  # noqa: F401 (the job's input, re-exported)
from prunectl.core.weights.catalog import WeightCounts, live_counts, unclassified
from prunectl.core.weights.prune import keras_only_layers, prune_file

if TYPE_CHECKING:
    from prunectl.core.training.finetune import TrainingProgress

# A stage of the run as it starts ("loading", "planning"), or a decision as it is made ("plan", with the
# plan's dict), so that a caller can show the work in the order it happens.
Events = Callable[[str, dict | None], None]


def _no_events(stage: str, value: dict | None = None) -> None:
    pass


def default_output(model: Path) -> Path:
    """``model.h5`` -> ``model.pruned.h5`` beside it."""
    return model.with_name(f"{model.stem}.pruned{model.suffix}")


def default_report(output: Path) -> Path:
    """``model.pruned.h5`` -> ``model.pruned.h5.report.json`` beside it.

    The output's whole name is kept, suffix included, so the reports of ``model.h5``
    and ``model.keras`` pruned in one folder do not overwrite each other.
    """
    return output.with_name(f"{output.name}.report.json")


def choose_engine(request: PruneRequest, target: Path, model: ModelFile | None = None) -> str:
    """Resolve ``auto``: the file engine unless the format changes, a step needs Keras, or a weight's class is unknown.

    The file cannot say what a custom layer's sub-layers are (see
    :func:`~prunectl.core.weights.catalog.unclassified`); the keras engine can.

    Raises:
        OptionError: ``file`` was asked for where it cannot run.
    """
    converting = model_format(request.model) != model_format(target)
    opaque = unclassified(model) if model is not None else []
    if request.engine == "file" and opaque:
        raise OptionError(
            "the file engine cannot tell what the weights inside these layers are (their classes are known only "
            f"to Keras); use --engine keras or auto. Received: {shown_names(opaque, 5)}"
        )
    step = request.weights_only()
    patterned = keras_only_layers(model, step) if model is not None and step is not None else []
    if request.engine == "file" and patterned and step is not None and step.pattern is not None:
        raise OptionError(
            f"the file engine cannot place the {step.pattern.label} pattern in these layers' weights: "
            "their input axes come from a nested layer's config (an EinsumDense's equation) that only Keras "
            f"builds; use --engine keras or auto. Received: {shown_names(patterned, 5)}"
        )
    if request.engine == "file" and converting:
        raise OptionError(
            "the file engine cannot convert between .h5 and .keras; use --engine keras or auto. "
            f"Received: {request.model.suffix} -> {target.suffix}"
        )
    if request.engine == "file" and request.needs_keras():
        raise OptionError("the file engine runs weight steps only; use --engine keras or auto. Received: --engine file")
    if request.engine == "auto":
        return "keras" if converting or request.needs_keras() or opaque or patterned else "file"
    return request.engine


def _run_file(request: PruneRequest, model: ModelFile, target: Path, progress: Progress | None) -> PruneOutcome:
    start = time.perf_counter()
    step = request.weights_only()
    if step is None:  # choose_engine picks the file engine only for a weight step alone
        raise OptionError("the file engine needs a weight step. Received: no threshold or sparsity")
    check_agreement(model)  # the config is copied verbatim: it must be one Keras can load with these weights
    results, counts = prune_file(model, target, step, request.compression, request.keep_optimizer, progress)
    return PruneOutcome("file", results, counts, time.perf_counter() - start)


def _run_keras(
    request: PruneRequest,
    model: ModelFile,
    target: Path,
    progress: Progress | None,
    training: TrainingProgress | None = None,
    events: Events = _no_events,
) -> PruneOutcome:
    from prunectl.core.io import keras_io
    from prunectl.core.run.pipeline import Finetune, Runner
    from prunectl.core.structure import plan as structural
    from prunectl.core.structure.cost import benchmark
    from prunectl.core.training.data import calibration_inputs
    from prunectl.core.training.distribute import strategy_scope
    from prunectl.core.training.evaluate import Evaluator, evaluation_block, finetune_evaluation

    start = time.perf_counter()
    timing, x, evaluate, evaluation = None, None, None, None
    # The model, the masks and the optimizer must all be created in the strategy's scope.
    tuning = request.tuning()
    with strategy_scope(tuning.strategy if tuning else "default", tuning.worker_timeout if tuning else None):
        events("loading", None)
        if tuning is not None and tuning.seed is not None:
            # Before the model is built: a Dropout layer seeds its generator when it is created.
            keras_io.import_keras().utils.set_random_seed(tuning.seed)
        loaded = keras_io.load_model(model, unsafe=request.unsafe)
        original = loaded.model
        notes = list(loaded.notes)
        if request.keep_optimizer:
            notes.append("optimizer state is not carried by the keras engine")
        if request.data and (
            request.neuron_steps() or request.benchmark or request.fold_batchnorm or request.data_aware()
        ):
            x = calibration_inputs(request.data, original)
        if request.evaluation is not None:
            evaluate = Evaluator(loaded, request.evaluation)
            before = evaluate(original)
        steps = request.steps
        if (
            len(steps) == 1
            and isinstance(steps[0], structural.NeuronPruning)
            and _writes_plan_only(request, model, target, loaded)
        ):
            events("planning", None)
            plan = structural.plan_structure(original, steps[0], x)
            events("plan", plan.to_dict())
            rewrite = _rewrite(model, original, plan)
            if rewrite is not None:
                counts = _write_rewrite(model, target, rewrite, request.compression, progress)
                return PruneOutcome("keras", {}, counts, time.perf_counter() - start, notes, None, plan.to_dict())
            plans = [plan]
        else:
            plans = []
        # A multi-step run is measured after every step (and evaluated, where there is evaluation data).
        many = len(steps) > 1 or request.target is not None
        runner = Runner(
            loaded,
            steps or ((Finetune(tuning),) if tuning else ()),
            x,
            evaluate if many else None,
            training,
            events,
            request.unsafe,
        )
        search = None
        if request.target is not None and evaluate is not None:
            from prunectl.core.run.search import Search, default_base

            found = Search(
                runner,
                request.target,
                dict(request.gates)["max-accuracy-drop"],
                evaluate,
                request.search_stages(),
                tuning,
                default_base(),
                request.compression,
                events,
            )
            search = found.run()
            search["steps"] = found.steps
        for index, step in enumerate(steps):
            runner.run(step, plans[0] if plans and index == 0 else None)
        loaded, notes = runner.loaded, notes + runner.notes
        folded = None
        if request.fold_batchnorm:
            events("folding", None)
            loaded, folded = _fold(loaded, x, request.unsafe, bool(steps))
        if evaluate is not None:
            evaluation = evaluation_block(
                evaluate.describe(), ("before pruning", before), ("after pruning", evaluate(loaded.model))
            )
        elif runner.finetunes and steps and isinstance(steps[-1], Finetune):
            evaluation = finetune_evaluation(runner.finetunes[-1])
        counts = WeightCounts([])
        save_keras_model(loaded.model, target, request.compression, counts.counting_file, progress=progress)
        if unclassified(model):  # the saved file cannot say which weights are kernels: count the live model
            counts = live_counts(loaded.model)
        if request.benchmark:
            timing = benchmark(original, loaded.model, x)
    return PruneOutcome(
        "keras",
        runner.results,
        counts,
        time.perf_counter() - start,
        notes,
        runner.finetunes[-1] if runner.finetunes else None,
        structural.combine_plans(runner.plans).to_dict() if runner.plans else None,
        timing,
        evaluation,
        runner.data_aware,
        [r.to_dict() for r in runner.records] if many else None,
        search,
        folded,
    )


def _fold(loaded, x, unsafe: bool, other_steps: bool):
    """``loaded`` with its BatchNormalization layers folded (recompiled as it was), and the fold's record.

    Raises:
        StructureError: nothing to fold and no other step: the run would write the model unchanged.
    """
    from prunectl.core.io import keras_io
    from prunectl.core.structure.fold import fold_checked, foldable_pairs

    if not foldable_pairs(loaded.model):
        if not other_steps:
            raise StructureError(
                "--fold-batchnorm found no BatchNormalization to fold (one on the last axis, fed only by a "
                "Dense or convolution without activation); nothing was written. "
                f"Received: {sum(type(layer).__name__ == 'BatchNormalization' for layer in loaded.model.layers)} "
                "BatchNormalization layers"
            )
        return loaded, {"folded": {}, "max_abs_diff": 0.0, "inputs": None, "samples": 0}
    model, record = fold_checked(loaded.model, x, unsafe)
    spec = loaded.compile_spec
    if spec and spec.loss is not None:
        keras_io.compile_model(model, spec)
    return replace(loaded, model=model), record


def _writes_plan_only(request: PruneRequest, model: ModelFile, target: Path, loaded) -> bool:
    """Whether the output is the structural plan alone, .keras to .keras, with nothing that needs the model live."""
    return (
        model.format == "keras"
        and model_format(target) == "keras"
        and request.evaluation is None
        and not request.benchmark
        and not request.fold_batchnorm
        and not request.keep_optimizer
        # A compiled model is recompiled after apply_plan; its compile config is Keras's to write.
        and (loaded.compile_spec is None or loaded.compile_spec.loss is None)
    )


def _rewrite(model: ModelFile, original, plan):
    from prunectl.core.structure.rewrite import rewrite_plan, stored_as_expected

    if not stored_as_expected(model.entries, original):
        return None
    return rewrite_plan(model.config, original, plan)


def _write_rewrite(
    model: ModelFile, target: Path, rewrite, compression: str, progress: Progress | None
) -> WeightCounts:
    """Write the pruned model as the input file edited (see ``core.structure.rewrite``): no Keras rebuild or save."""
    import json
    from datetime import datetime

    from prunectl.core.io.keras_io import import_keras
    from prunectl.core.weights.catalog import tag_prunable

    keras = import_keras()

    counts = WeightCounts(tag_prunable(rewrite.entries(model.entries)))
    members = {
        "config.json": json.dumps(rewrite.config).encode(),
        # What a Keras save writes beside the config.
        "metadata.json": json.dumps(
            {"keras_version": keras.__version__, "date_saved": datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}
        ).encode(),
    }
    write_model(
        model,
        target,
        compression,
        counts.counting(rewrite.weight),
        progress=progress,
        members=members,
    )
    return counts


def _plan_only(request: PruneRequest, model: ModelFile, events: Events = _no_events) -> PlanReport:
    from prunectl.core.io import keras_io
    from prunectl.core.structure import plan as structural
    from prunectl.core.training.data import calibration_inputs

    step = request.steps[0]
    if not isinstance(step, structural.NeuronPruning):  # PruneRequest refuses a dry run without one first
        raise OptionError("a dry run plans a structural step. Received: no neuron_threshold or neuron_ratio")
    events("loading", None)
    loaded = keras_io.load_model(model, unsafe=request.unsafe)
    x = calibration_inputs(request.data, loaded.model) if request.data else None
    events("planning", None)
    plan = structural.plan_structure(loaded.model, step, x)
    events("plan", plan.to_dict())
    return plan_report(model, request.options(), plan)


def input_files(request: PruneRequest) -> tuple[Path | None, ...]:
    """Every file ``request`` reads: the model, its data files and its recipe (None where not given)."""
    finetune, evaluation = request.tuning(), request.evaluation
    return (
        request.model,
        request.data,
        request.recipe,
        finetune.val_data if finetune else None,
        evaluation.data if evaluation else None,
    )


def check_outputs(request: PruneRequest) -> tuple[Path, Path]:
    """Check every output path of ``request`` before any work: each writable and distinct from the others.

    Outputs are compared with each other and with every input through symbolic
    and hard links (see :func:`~prunectl.core.io.atomic.check_output`).

    Returns:
        The output model's path and the report's path (defaults resolved).

    Raises:
        OutputError: a path that cannot or must not be written (a missing folder, an
            existing file without ``force``, anything but a regular file, an input,
            or another output's path).
    """
    output = request.output or default_output(request.model)
    if output.suffix.lower() not in H5_SUFFIXES + (KERAS_SUFFIX,):
        raise OutputError(f"output must end in .h5, .hdf5 or .keras. Received: {str(output)!r}")
    report_path = request.report or default_report(output)
    named = (
        ("output", output),
        ("report", report_path),
        ("markdown", request.markdown),
        ("recipe-out", request.recipe_out),
    )
    inputs = input_files(request)
    for _, path in named:
        if path is not None:
            check_output(path, request.force, inputs=inputs)
    if same_file(report_path, output):
        raise OutputError(f"report path is the output model's path. Received: {str(report_path)!r}")
    check_distinct(named)
    return output, report_path


def _write_recipe(path: Path, report: PruneReport) -> None:
    from prunectl.core.run.recipe import recipe_toml

    header = (
        f"Written by prunectl {report.header.tool['prunectl']} from the run that wrote "
        f"{report.output['path']}.\nRepeat it with: prunectl prune {report.input['path']} --recipe {path.name}"
    )
    write_text_atomic(path, recipe_toml(report.pipeline, header, relative_to=path.parent))


def writes_outputs(request: PruneRequest) -> bool:
    """Whether this process writes the outputs: any but a multi-worker run's non-chief workers without ``-o``."""
    tuning = request.tuning()
    if tuning is None or tuning.strategy != "multiworker" or request.output is not None:
        return True
    from prunectl.core.training.distribute import is_chief

    return is_chief()


def _run_as_worker(request: PruneRequest, training, events) -> PruneReport | PlanReport:
    """A non-chief worker's run: trained with the cluster, its outputs written to a temporary folder and dropped."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="prunectl-worker-") as folder:
        suffix = request.model.suffix if request.model.suffix.lower() != ".hdf5" else ".h5"
        private = replace(
            request,
            output=Path(folder) / f"model{suffix}",
            report=Path(folder) / "report.json",
            markdown=None,
            recipe_out=None,
            force=True,
        )
        # No "writing ..." bar: what it writes is dropped.
        report = run_prune(private, None, training, events)
    return replace(report, written=False) if isinstance(report, PruneReport) else report


def run_prune(
    request: PruneRequest,
    progress: Progress | None = None,
    training: TrainingProgress | None = None,
    events: Events | None = None,
) -> PruneReport | PlanReport:
    """Run one prune job and return its report (also written to disk).

    Args:
        request: what to do (checked when it was built).
        progress: called as each weight tensor is written.
        training: called at the end of every fine-tuning step and epoch.
        events: called as a stage starts (``"loading"``, ``"planning"``) and as the
            structural plan is decided (``"plan"``, with the plan's dict).

    Returns:
        The report (a :class:`PlanReport` for a dry run); its ``return_code`` says
        whether a gate failed.

    Raises:
        PrunectlError: any problem with the input, the options or the outputs;
            nothing has been written when it is raised.
    """
    events = events or _no_events
    if not writes_outputs(request):
        return _run_as_worker(request, training, events)
    with open_model_file(request.model) as model:
        if request.dry_run:
            return _plan_only(request, model, events)
        output, report_path = check_outputs(request)
        exported = check_export(request, output)
        gates = [GATES.get(name)(limit) for name, limit in request.gates]
        engine = choose_engine(request, output, model)
        outcome = (
            _run_file(request, model, output, progress)
            if engine == "file"
            else _run_keras(request, model, output, progress, training, events)
        )
        found = outcome.search.pop("steps") if outcome.search else None
        pipeline = {
            "recipe": str(request.recipe) if request.recipe else None,
            **request.pipeline(fuse(found) if found is not None else None),
        }
        report = prune_report(outcome, model, output, request.options(), report_path, pipeline, gates)
    if exported is not None:
        report = replace(report, export=export_pruned(request, output, exported))
    write_text_atomic(report_path, report.to_json())
    if request.markdown is not None:
        write_text_atomic(request.markdown, report_markdown(report.to_dict()))
    if request.recipe_out is not None:
        _write_recipe(request.recipe_out, report)
    return report
