"""Fine-tune a pruned Keras model while every pruned weight stays exactly zero.

The masks are held by a constraint set on each pruned kernel *variable* (not on
the layer): Keras' optimizers apply a variable's constraint right after every
update, inside the compiled training step and on every replica, so a weight
that momentum pushes off zero is put back before the step ends. The masks are
non-trainable variables created in the strategy's scope, so a schedule can
change them between steps without retracing. After training, the constraints
(and the L1 penalty, also set on the variables) are removed: the saved model is
a plain Keras model whose config never mentions them.

Order of a run: read data -> check it against the model -> compile ->
(copy the model as the distillation teacher) -> evaluate -> prune -> evaluate
-> fit (masks recomputed as the schedule says, the learning rate set before
every step) -> evaluate -> plots.

The defaults (:mod:`prunectl.core.training.defaults`) were chosen by measurement
(``benchmarks/finetune_sweep.py``): fine-tuning at three times the model's own
learning rate recovers the most; cosine decay, warm-up and distillation did not
help on the digits models and are off unless asked for.

With an L1 penalty and a one-shot weight step, the step runs *after* training
instead (the sparsity-by-L1 workflow: the penalty drives weights towards zero,
then the threshold or sparsity cuts them): evaluate -> fit -> evaluate -> prune
-> evaluate. With an L1 penalty and no weight step, every prunable kernel is
penalized and nothing is pruned. Reported losses never include the penalty
(Keras's training history does; the report says so).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from prunectl.core.errors import DataError, OptionError
from prunectl.core.io.keras_io import LoadedModel, compile_model, import_keras
from prunectl.core.options import check_number, check_reader, validate_seed
from prunectl.core.training import data as datamod
from prunectl.core.training import defaults
from prunectl.core.training.defaults import (
    DEFAULT_DISTILL,
    DEFAULT_LR_SCALE,
    DEFAULT_LR_SCHEDULE,
    DEFAULT_TEMPERATURE,
    DEFAULT_WARMUP,
    DEFAULT_WORKER_TIMEOUT,
)
from prunectl.core.training.distill import distill_term, distillation
from prunectl.core.training.distribute import strategy_section, tf_strategy
from prunectl.core.training.evaluate import identifier_name, resolve_compile
from prunectl.core.training.loop import Feeder, Loop, check_batch, shared_seed
from prunectl.core.weights.catalog import keras_weight_entries
from prunectl.core.weights.masks import count_zeros
from prunectl.core.weights.prune import WeightPruning, WeightResult, prune_keras_model
from prunectl.core.weights.schedules import LR_SCHEDULES, SCHEDULES
from prunectl.core.weights.selection import select_weights


@dataclass(frozen=True)
class FinetuneOptions:
    """How to fine-tune after pruning (and on what to evaluate).

    Attributes:
        data: training data file (``.npz``, ``.h5`` or ``.csv``).
        epochs: training epochs; 0 only evaluates before and after pruning.
        val_data: validation data file, or None.
        val_split: fraction of ``data`` (its last samples) held out for validation, or None.
        reader: reader options (``x_key``, ``y_key``, ``label_col``) for both files.
        batch_size: samples per (global) batch.
        learning_rate: overrides the optimizer's learning rate (also in the saved model).
        lr_scale: without ``learning_rate``, fine-tune at this multiple of the
            model's own rate (the saved model keeps its own): recovering from
            pruning needs a larger step than the end of the dense training used.
        optimizer: a Keras optimizer name; default: the model's saved one, else adam.
        loss: a Keras loss name; default: the model's saved loss, else inferred.
        metrics: Keras metric names; default: the saved ones, else inferred.
        schedule: a name in ``schedules.SCHEDULES``.
        initial_sparsity, prune_begin, prune_end: the polynomial schedule's start
            sparsity and window (fractions of the run's steps).
        l1: L1 penalty during training (0: none) on the pruned kernels, or on every
            prunable kernel without a weight step; with a one-shot weight step,
            the step then runs after training.
        distill: weight ``alpha`` in [0, 1] of the distillation term (the model
            before pruning as a frozen teacher; 0: off); None: the default
            (:data:`defaults.DEFAULT_DISTILL` for a classifier, off for any other loss).
        temperature: the distillation's softening temperature (> 0) for classifiers.
        lr_schedule: a name in ``schedules.LR_SCHEDULES``: the learning rate over the run.
        warmup: linear warm-up of the learning rate over this fraction of the run's
            steps, after the pruning at step 0 (and after every mask update when
            :data:`defaults.WARMUP_AFTER_UPDATES`).
        seed: makes the run reproducible; an integer in [0, 2**32 - 1].
        strategy: a name in ``distribute.STRATEGIES`` (applied by the pipeline).
        worker_timeout: under ``multiworker``, seconds to wait for the other workers
            (at start, and at every collective) before stopping with an error.
        plots: folder for PNG figures, or None.

    Raises:
        OptionError: on an out-of-range or conflicting value, or ``plots``
            without matplotlib installed.
    """

    data: Path
    epochs: int = 1
    val_data: Path | None = None
    val_split: float | None = None
    reader: tuple[tuple[str, str], ...] = ()
    batch_size: int = 32
    learning_rate: float | None = None
    lr_scale: float = DEFAULT_LR_SCALE
    optimizer: str | None = None
    loss: str | None = None
    metrics: tuple[str, ...] = ()
    schedule: str = "oneshot"
    initial_sparsity: float = 0.0
    prune_begin: float = 0.0
    prune_end: float = 0.5
    l1: float = 0.0
    distill: float | None = None
    temperature: float = DEFAULT_TEMPERATURE
    lr_schedule: str = DEFAULT_LR_SCHEDULE
    warmup: float = DEFAULT_WARMUP
    seed: int | None = None
    strategy: str = "default"
    worker_timeout: float = DEFAULT_WORKER_TIMEOUT
    plots: Path | None = None

    def __post_init__(self):
        SCHEDULES.get(self.schedule)
        LR_SCHEDULES.get(self.lr_schedule)
        # "finetune_epochs" is the field's name among the prune command's options.
        check_number(self.epochs, "finetune_epochs", 0, integer=True)
        check_number(self.batch_size, "batch_size", 1, integer=True)
        check_number(self.l1, "l1", 0)
        check_number(self.initial_sparsity, "initial_sparsity", 0, 1, high_open=True)
        check_number(self.prune_begin, "prune_begin", 0, 1)
        check_number(self.prune_end, "prune_end", 0, 1)
        check_number(self.temperature, "temperature", 0, low_open=True)
        check_number(self.warmup, "warmup", 0, 1, high_open=True)
        check_number(self.worker_timeout, "worker_timeout", 0, low_open=True)
        if self.distill is not None:
            check_number(self.distill, "distill", 0, 1)
            if self.distill > 0 and self.epochs == 0:
                raise OptionError(
                    "{distill} trains against the model before pruning; give {finetune_epochs} of at least 1. "
                    f"Received: {{distill}} {self.distill} {{finetune_epochs}} {self.epochs}",
                    "distill",
                    "finetune_epochs",
                )
        if self.learning_rate is not None:
            check_number(self.learning_rate, "learning_rate", 0, low_open=True)
        check_number(self.lr_scale, "lr_scale", 0, low_open=True)
        if self.val_split is not None:
            check_number(self.val_split, "val_split", 0, 1, low_open=True, high_open=True)
        if self.seed is not None:
            validate_seed(self.seed)
        if self.val_split is not None and self.val_data is not None:
            raise OptionError(
                "give only one of {val_data} and {val_split}. "
                f"Received: {{val_data}} {self.val_data} {{val_split}} {self.val_split}",
                "val_data",
                "val_split",
            )
        check_reader(self.data, self.reader)
        if self.plots is not None:
            from prunectl.core.training.plots import require_matplotlib

            require_matplotlib()

    def get_config(self) -> dict:
        config = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("data", "val_data", "plots"):
            config[key] = None if config[key] is None else str(config[key])
        config["reader"], config["metrics"] = dict(self.reader), list(self.metrics)
        return config

    @classmethod
    def from_config(cls, config: dict) -> FinetuneOptions:
        """The options :meth:`get_config` describes."""
        values = dict(config)
        for key in ("data", "val_data", "plots"):
            values[key] = None if values.get(key) is None else Path(values[key])
        values["reader"] = tuple(dict(values.get("reader") or {}).items())
        values["metrics"] = tuple(values.get("metrics") or ())
        return cls(**values)


@dataclass(frozen=True)
class TrainingEvent:
    """One progress report: the end of a step (``kind="step"``) or of an epoch (``"epoch"``)."""

    kind: str
    epoch: int
    epochs: int
    step: int
    steps: int
    logs: dict


TrainingProgress = Callable[[TrainingEvent], None]


@dataclass
class FinetuneOutcome:
    """What a fine-tuning run produced: the pruning results, the report section and notes."""

    results: dict[str, WeightResult]
    report: dict
    notes: list[str] = field(default_factory=list)


class _MaskConstraint:
    """``w -> inner(w) * mask``: keeps pruned weights at zero after every optimizer update."""

    def __init__(self, mask, inner=None):
        self.mask, self.inner = mask, inner

    def __call__(self, w):
        return (self.inner(w) if self.inner is not None else w) * self.mask


class HeldMasks:
    """Masks (1 = kept, 0 = pruned) held on the selected variables of a live Keras model.

    Args:
        variables: the pruned kernel variables.
    """

    def __init__(self, variables: list):
        keras = import_keras()
        self.variables = variables
        self._saved = [v.constraint for v in variables]
        self.masks = [
            keras.Variable(np.ones(v.shape, v.dtype), trainable=False, dtype=v.dtype, name=f"mask_{i}")
            for i, v in enumerate(variables)
        ]
        for variable, mask, constraint in zip(variables, self.masks, self._saved):
            variable.constraint = _MaskConstraint(mask, constraint)
        self.refresh()

    def refresh(self) -> None:
        """Make the masks match the variables' current zeros."""
        for variable, mask in zip(self.variables, self.masks):
            mask.assign((variable.numpy() != 0).astype(mask.dtype))

    def release(self) -> None:
        """Restore each variable's own constraint."""
        for variable, constraint in zip(self.variables, self._saved):
            variable.constraint = constraint


def _watch(epochs: int, steps: int, progress: TrainingProgress | None, model):
    """Progress reports, and a stop at the first non-finite loss or weight: ``(after_step, after_epoch)``.

    The loss checked is the running mean the step already returned (it stays
    non-finite once a step's loss is), so the check costs no extra read.
    """

    def after_step(epoch: int, step: int, logs: dict) -> None:
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(loss):
            raise DataError(
                f"fine-tuning stopped: the loss became {loss} at epoch {epoch}/{epochs}, "
                f"step {step}/{steps}; nothing was written. Lower the learning rate or check the data "
                f"and the loss. Received: loss={loss}"
            )
        if progress:
            progress(TrainingEvent("step", epoch, epochs, step, steps, logs))

    def after_epoch(epoch: int, logs: dict) -> None:
        # The last step's update is applied after its loss is computed, so a finite loss can still
        # leave NaN or inf weights behind (a learning rate that overflows float32, say): once an epoch.
        for variable in model.weights:
            bad = int(np.count_nonzero(~np.isfinite(variable.numpy())))
            if bad:
                raise DataError(
                    f"fine-tuning stopped: {bad:,} weights of {variable.path} became NaN or inf in epoch "
                    f"{epoch}/{epochs}; nothing was written. Lower the learning rate or check the data "
                    f"and the loss. Received: {bad:,} of {int(np.prod(variable.shape)):,} values"
                )
        if progress:
            progress(TrainingEvent("epoch", epoch, epochs, steps, steps, logs))

    return after_step, after_epoch


def _teacher(keras, model):
    """A frozen copy of ``model`` as it is now (before pruning), created in the active strategy's scope."""
    teacher = keras.models.clone_model(model)
    teacher.set_weights(model.get_weights())
    teacher.trainable = False
    return teacher


def _plain_rate(model) -> float | None:
    """The optimizer's learning rate, or None where it follows a schedule object of its own."""
    rate = model.optimizer.learning_rate
    return float(np.asarray(rate)) if hasattr(rate, "assign") else None


def _rate_schedule(options: FinetuneOptions, model, schedule, total: int):
    """The learning-rate schedule of the run, or None where the rate stays the optimizer's own."""
    warmup_steps = round(options.warmup * total)
    if options.lr_schedule == "constant" and not warmup_steps:
        return None
    if not hasattr(model.optimizer.learning_rate, "assign"):
        raise OptionError(
            "the model's optimizer follows its own learning-rate schedule; {lr_schedule} and {warmup} need a "
            "plain rate: give {learning_rate}. "
            f"Received: {{lr_schedule}} {options.lr_schedule} {{warmup}} {options.warmup}",
            "lr_schedule",
            "warmup",
            "learning_rate",
        )
    restarts = [0]
    if defaults.WARMUP_AFTER_UPDATES and schedule is not None:
        restarts = [step for step in range(total) if step == 0 or schedule(step) is not None]
    base = float(np.asarray(model.optimizer.learning_rate))
    return LR_SCHEDULES.get(options.lr_schedule)(base, total, warmup_steps, tuple(restarts))


def _distill_section(alpha: float, term: str, temperature: float, structural: bool) -> dict:
    """The report's account of distillation (all None but ``alpha`` when it was off)."""
    if not alpha:
        return {"alpha": 0.0, "temperature": None, "term": None, "teacher": None}
    return {
        "alpha": alpha,
        "temperature": temperature if term != "mse" else None,
        "term": "mse to the teacher's outputs"
        if term == "mse"
        else f"T^2 * KL(teacher_T || student_T), {term} outputs",
        "teacher": "the model before the structural step" if structural else "the model before pruning",
    }


def resolved_distill(options: FinetuneOptions, loss) -> tuple[float, str]:
    """The distillation weight a run uses (the default depends on the loss) and the term's kind."""
    kind = distill_term(loss).kind
    if not options.epochs:
        return 0.0, kind
    if options.distill is not None:
        return float(options.distill), kind
    return (DEFAULT_DISTILL if kind != "mse" else 0.0), kind


def _read(options: FinetuneOptions, model):
    reader = dict(options.reader)
    train = datamod.read_dataset(options.data, lazy=True, **reader)
    val = datamod.read_dataset(options.val_data, lazy=True, **reader) if options.val_data else None
    if options.val_split:
        train, val = datamod.split(train, options.val_split)
    shapes = (tuple(model.inputs[0].shape[1:]), tuple(model.outputs[0].shape[1:]))
    datamod.check_fits(train, *shapes, name="training data")
    if val is not None:
        datamod.check_fits(val, *shapes, name="validation data")
    return train, val


def schedule_is_oneshot(options: FinetuneOptions) -> bool:
    """Whether the weight step prunes once (not along a schedule)."""
    return options.schedule == "oneshot"


def _l1_section(
    options: FinetuneOptions, selected, penalty: float, evaluation: dict, prune_after: bool, weights
) -> dict:
    """The report's account of the L1 penalty: on what, when the step pruned, and the loss with and without it."""
    trained = evaluation.get("after_finetuning", {}).get("loss")
    step = None
    if weights is not None:
        step = "during training" if not schedule_is_oneshot(options) else "before training"
        step = "after training" if prune_after else step
    return {
        "lambda": options.l1,
        "weights": [e.key for e in selected],
        "weight_step": step,
        # l1 * sum(|w|) over the penalized weights, as they were when training ended.
        "penalty": penalty,
        "loss": trained,
        "loss_with_penalty": None if trained is None else trained + penalty,
        "loss_note": "the evaluation losses and the history's val_loss exclude the L1 penalty; "
        "the history's (training) loss includes it",
    }


def finetune_model(
    loaded: LoadedModel,
    weights: WeightPruning | None,
    options: FinetuneOptions,
    progress: TrainingProgress | None = None,
    original=None,
    hold: tuple[WeightPruning, ...] = (),
) -> FinetuneOutcome:
    """Prune a live Keras model as ``options.schedule`` says and fine-tune it with the masks held.

    Runs inside whatever ``tf.distribute`` scope is active (the pipeline enters it
    before loading the model).

    Args:
        loaded: the model as loaded by :func:`keras_io.load_model`.
        weights: the pruning step (its sparsity is the schedule's final sparsity).
        options: the fine-tuning options.
        progress: called at the end of every step and epoch.
        original: the model before earlier steps, evaluated as "before pruning" and
            the distillation teacher (default: ``loaded.model`` before this step prunes).
        hold: earlier weight steps: the zeros of the weights they select are held too.

    Returns:
        The per-weight pruning results, the report section and notes.

    Raises:
        DataError: unreadable data, data that does not fit the model, or a loss that became NaN or infinite.
        OptionError: an undeterminable loss, or a schedule the step cannot follow.
        SelectionError: the step selects no weights.
    """
    keras = import_keras()
    if options.schedule != "oneshot" and (weights is None or weights.sparsity is None):
        raise OptionError(
            f"the {options.schedule} schedule prunes to a sparsity; give --sparsity, "
            f"not --threshold. Received: threshold={weights.threshold if weights else None}"
        )
    if options.seed is not None:
        keras.utils.set_random_seed(options.seed)
    model = loaded.model
    train, val = _read(options, model)
    spec, loss_source = resolve_compile(
        model, loaded.compile_spec, train.y, options.loss, options.metrics, options.optimizer
    )
    notes = compile_model(model, spec)
    if options.learning_rate is not None:
        model.optimizer.learning_rate = options.learning_rate
    dtypes = (np.dtype(model.inputs[0].dtype), np.dtype(train.y.dtype) if train.y.dtype.kind in "biu" else np.float32)
    strategy = tf_strategy()
    replicas = int(strategy.num_replicas_in_sync)
    check_batch(options.batch_size, replicas)
    seed = shared_seed(strategy, options.seed)
    feed = Feeder(strategy, train, options.batch_size, dtypes, shuffle=True, seed=seed)
    val_feed = Feeder(strategy, val, options.batch_size, dtypes, training=False) if val is not None else None
    if feed.current.skipped:
        notes.append(
            f"each epoch skipped its last {feed.current.skipped} training sample(s): too few to give each "
            f"of the {replicas} replicas one (a different sample each epoch)"
        )
    if options.strategy == "mirrored" and replicas == 1:
        notes.append("--strategy mirrored ran with one replica: this machine has one device")

    if original is not None:
        compile_model(original, spec)
    pairs = keras_weight_entries(model)
    # Without a weight step (a structural step alone) there are no masks: plain fine-tuning;
    # with an L1 penalty, every prunable kernel carries it.
    entries = [e for e, _ in pairs]
    if weights or hold:
        chosen = {
            e.key: e
            for step in (*hold, *([weights] if weights else []))
            for e in select_weights(entries, step.include, step.exclude)
        }
        selected = [e for e in entries if e.key in chosen]
    else:
        selected = select_weights(entries) if options.l1 else []
    prune_after = bool(options.l1 and weights is not None and schedule_is_oneshot(options))
    variables = {e.key: v for e, v in pairs}
    zeros_before = {e.key: count_zeros(variables[e.key].numpy()) for e in selected}
    before = {e.key: variables[e.key].numpy() for e in selected} if options.plots else {}

    steps = feed.steps
    total = steps * options.epochs
    schedule = (
        SCHEDULES.get(options.schedule).for_run(
            weights.sparsity,
            max(1, total),
            initial_sparsity=options.initial_sparsity,
            begin=options.prune_begin,
            end=options.prune_end,
        )
        if weights and weights.sparsity is not None
        else None
    )
    results: dict[str, WeightResult] = {}
    updates: list[list] = []

    def prune_at(step: int) -> WeightPruning | None:
        """Prune to the schedule's sparsity at ``step`` (a threshold step prunes once, at step 0)."""
        if schedule is None:
            pruning = weights if step == 0 and weights is not None else None
        else:
            sparsity = schedule(step)
            pruning = None if sparsity is None or weights is None else replace(weights, sparsity=sparsity)
            if pruning is not None:
                updates.append([step, sparsity])
        if pruning is not None:
            for key, result in prune_keras_model(model, pruning).items():
                # A tensor's threshold is the largest magnitude any update zeroed in it: an update that
                # zeroes nothing new cuts among the held zeros, at 0.
                old = results.get(key)
                results[key] = replace(result, threshold=max(result.threshold, old.threshold)) if old else result
        return pruning

    alpha, term = resolved_distill(options, model.loss)
    # The teacher is the model before any pruning: the structural step's input, else a copy made now.
    teacher = (original if original is not None else _teacher(keras, model)) if alpha else None
    distilled = distillation(model, teacher, alpha, options.temperature) if alpha else None
    held_variables = [variables[e.key] for e in selected]
    loop = Loop(strategy, model, (held_variables, options.l1), distilled)
    evaluation = {}

    def evaluate(when: str, on=None) -> None:
        if val_feed is not None:
            evaluation[when] = loop.evaluate(on or model, val_feed)

    evaluate("before_pruning", original)
    if not prune_after and (weights is not None or original is not None):  # else nothing was pruned
        prune_at(0)
        evaluate("after_pruning")
    held = HeldMasks(held_variables)
    history = {}
    # The rate the saved model keeps: its own, or --learning-rate's.
    kept_rate = _plain_rate(model)
    if options.epochs and options.learning_rate is None and options.lr_scale != 1:
        if kept_rate is None:
            notes.append("the optimizer follows its own learning-rate schedule: lr_scale was not applied")
        else:
            model.optimizer.learning_rate.assign(kept_rate * options.lr_scale)
    rates = _rate_schedule(options, model, schedule, total) if options.epochs else None
    base_rate = _plain_rate(model)

    def before_step(step: int) -> None:
        # Assigning the rate variable (not replacing it) keeps the compiled step: no retrace.
        if rates is not None:
            model.optimizer.learning_rate.assign(rates(step))
        if step and prune_at(step) is not None:
            held.refresh()

    try:
        if options.epochs:
            after_step, after_epoch = _watch(options.epochs, steps, progress, model)
            history = loop.fit(feed, options.epochs, val_feed, before_step, after_step, after_epoch)
    finally:
        held.release()
        if kept_rate is not None:
            # The saved optimizer config carries the rate: the model's own, not the one fine-tuning ended at.
            model.optimizer.learning_rate.assign(kept_rate)
    # Read back only where there is a penalty to report (it copies every penalized weight).
    penalty = options.l1 * sum(float(np.abs(variables[e.key].numpy()).sum()) for e in selected) if options.l1 else 0.0
    if options.epochs:
        evaluate("after_finetuning")
    if prune_after:
        prune_at(0)
        evaluate("after_pruning")
    results = {k: replace(r, zeros_before=zeros_before[k]) for k, r in results.items()}
    if val is None:
        notes.append("no validation data (--val-data or --val-split): nothing was evaluated")
    report = {
        "data": {
            "train": str(options.data),
            "train_samples": len(train),
            "validation": str(options.val_data)
            if options.val_data
            else (f"last {options.val_split:g} of the training file" if options.val_split else None),
            "validation_samples": len(val) if val is not None else 0,
        },
        "compile": {
            "loss": identifier_name(spec.loss),
            "loss_source": loss_source,
            "metrics": [identifier_name(m) for m in spec.metrics],
            "optimizer": model.optimizer.__class__.__name__,
            "learning_rate": kept_rate,
        },
        "steps_per_epoch": steps,
        "steps": total,
        "schedule": schedule.get_config()
        if schedule
        else {"name": "oneshot", "threshold": weights.threshold if weights else None},
        "mask_updates": updates,
        "lr_scale": options.lr_scale if options.learning_rate is None else None,
        "lr_schedule": rates.get_config() if rates is not None else {"name": "constant", "base": base_rate},
        "learning_rates": [rates(epoch * steps) if rates is not None else base_rate for epoch in range(options.epochs)],
        "distillation": _distill_section(alpha, term, options.temperature, original is not None),
        "strategy": strategy_section(options.strategy, strategy),
        "replicas": replicas,
        "skipped_per_epoch": feed.current.skipped,
        "evaluation": evaluation,
        **({"l1": _l1_section(options, selected, penalty, evaluation, prune_after, weights)} if options.l1 else {}),
        "history": history,
        "plots": [],
    }
    if options.plots:
        from prunectl.core.training.plots import write_plots

        after = {key: variables[key].numpy() for key in before}
        report["plots"] = write_plots(options.plots, history, before, after)
    return FinetuneOutcome(results, report, notes)
