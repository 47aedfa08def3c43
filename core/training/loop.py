"""prunectl's own training and evaluation loop: one code path for every ``tf.distribute`` strategy.

Keras 3's ``Model.fit`` and ``Model.evaluate`` fail under
``MultiWorkerMirroredStrategy`` with two or more workers (keras-team/keras#20585:
``fit`` reduces a nested data batch with ``strategy.reduce``, which the
multi-worker strategy cannot, then fails again reducing the scalar loss). This
loop does what TensorFlow's guide for custom loops does, on whatever strategy
is active: the model, the masks, the metrics and the optimizer live in the
strategy's scope; a ``tf.function`` calls ``strategy.run`` with a
``GradientTape``; the optimizer all-reduces the gradients and applies each
variable's constraint (prunectl's mask) after the update on every replica.
Metrics are Keras metrics, whose variables are summed across replicas on read,
so every worker reads the global figures. Nothing is converted by AutoGraph (the steps have no
tensor-dependent Python branches): it would leave generated files in the temporary folder when a
signal stops the run, as Keras's own steps avoid too.

The loss each replica differentiates is its share of the global batch's mean:
``sum of its samples' losses / samples in the global batch`` (plus the
regularization penalty divided by the number of replicas), so the summed
gradients equal a single device's on the same global batch. Every replica gets
a slice of each global batch; a final batch too small to give each replica a
sample is skipped in training (with a note) and split with empty slices in
evaluation, where an empty slice adds nothing. With one replica nothing is
skipped and the loop steps exactly as ``fit`` would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from prunectl.core.errors import OptionError
from prunectl.core.io.keras_io import import_keras
from prunectl.core.training.data import Dataset


@dataclass(frozen=True)
class Pass:
    """One pass over a dataset: the global batches, each an index (a slice, or sample positions).

    Attributes:
        batches: each global batch's samples.
        skipped: samples left out because the final batch could not give every replica one.
    """

    batches: tuple
    skipped: int = 0

    @property
    def sizes(self) -> list[int]:
        return [_size(b) for b in self.batches]


def _size(index) -> int:
    return index.stop - index.start if isinstance(index, slice) else len(index)


def plan_pass(
    n: int, batch_size: int, replicas: int, order: np.ndarray | None = None, starts=None, training: bool = True
) -> Pass:
    """The global batches of one pass over ``n`` samples.

    Args:
        n: samples.
        batch_size: samples per global batch (the last may be smaller).
        replicas: replicas in sync; in training each must get at least one sample.
        order: a permutation of the samples (in-memory data, shuffled), or None.
        starts: the batches' first samples in the order to visit them (on-disk
            data, whose batches stay contiguous), or None for ``0, batch_size, ...``.
        training: skip a final batch smaller than ``replicas`` (an empty slice
            cannot train: its mean loss is undefined, and BatchNorm's moments too).
    """
    if starts is None:
        starts = range(0, n, batch_size)
    batches, skipped = [], 0
    for start in starts:
        stop = min(start + batch_size, n)
        if training and stop - start < replicas:
            skipped += stop - start
            continue
        batches.append(slice(start, stop) if order is None else order[start:stop])
    return Pass(tuple(batches), skipped)


def _chunks(index, parts: int) -> list:
    """``index`` cut into ``parts`` consecutive pieces whose sizes differ by at most one."""
    size = _size(index)
    bounds = [size * k // parts for k in range(parts + 1)]
    if isinstance(index, slice):
        return [slice(index.start + a, index.start + b) for a, b in zip(bounds, bounds[1:])]
    return [index[a:b] for a, b in zip(bounds, bounds[1:])]


class Feeder:
    """The batches of one dataset, as a distributed dataset of per-replica slices.

    Every input pipeline (one per worker) reads the whole file and yields, for
    each global batch of the current pass, the slices of its local replicas.

    Args:
        strategy: the active ``tf.distribute`` strategy.
        data: the samples, with targets.
        batch_size: samples per global batch.
        dtypes: numpy dtypes of x and y as fed.
        shuffle: a new order every pass (from ``seed`` and the pass number).
        seed: the shuffle's seed (the same on every worker).
        training: skip a final batch smaller than the replicas (see :func:`plan_pass`).
    """

    def __init__(self, strategy, data: Dataset, batch_size: int, dtypes, shuffle=False, seed=0, training=True):
        import tensorflow as tf

        self.data, self.batch_size, self.dtypes = data, batch_size, dtypes
        self.shuffle, self.seed, self.training = shuffle, seed, training
        self.replicas = int(strategy.num_replicas_in_sync)
        self.passes = 0
        self.current = self._plan()
        if data.y is None:
            raise ValueError("a Feeder needs targets")  # read_dataset's callers check them first
        signature = tuple(
            tf.TensorSpec((None, *array.shape[1:]), dtype) for array, dtype in zip((data.x, data.y), dtypes)
        )

        def dataset_fn(context):
            local = self.replicas // context.num_input_pipelines
            first = context.input_pipeline_id * local

            def generate():
                for index in self.current.batches:
                    for piece in _chunks(index, self.replicas)[first : first + local]:
                        yield self._read(piece)

            return tf.data.Dataset.from_generator(generate, output_signature=signature).prefetch(2)

        self.dataset = strategy.distribute_datasets_from_function(dataset_fn)

    def _read(self, index):
        x, y = self.data.x, self.data.y
        if not isinstance(index, slice) and not len(index):
            index = slice(0, 0)  # an empty slice reads nothing, from h5py as from numpy
        return np.asarray(x[index], self.dtypes[0]), np.asarray(y[index], self.dtypes[1])

    def _plan(self) -> Pass:
        n = len(self.data)
        if not self.shuffle:
            return plan_pass(n, self.batch_size, self.replicas, training=self.training)
        rng = np.random.default_rng([self.seed, self.passes])
        if isinstance(self.data.x, np.ndarray):
            return plan_pass(n, self.batch_size, self.replicas, order=rng.permutation(n), training=self.training)
        starts = rng.permutation(np.arange(0, n, self.batch_size))
        return plan_pass(n, self.batch_size, self.replicas, starts=starts, training=self.training)

    @property
    def steps(self) -> int:
        """Global batches per pass (the same every pass)."""
        return len(self.current.batches)

    def epoch(self):
        """Start a new pass: its plan (the sizes of its global batches) and an iterator over it."""
        if self.passes:
            self.current = self._plan()
        self.passes += 1
        return self.current, iter(self.dataset)


def check_batch(batch_size: int, replicas: int) -> None:
    """Refuse a global batch that cannot give every replica a sample."""
    if batch_size < replicas:
        raise OptionError(
            f"the global batch must give each of the {replicas} replicas at least one sample; "
            f"raise {{batch_size}} to {replicas} or more. Received: {{batch_size}} {batch_size}",
            "batch_size",
        )


def shared_seed(strategy, seed: int | None) -> int:
    """``seed``, or a random seed drawn by the first replica and shared with all (one all-reduce)."""
    if seed is not None:
        return seed
    import tensorflow as tf

    drawn = int(np.random.SeedSequence().generate_state(1)[0]) % (2**31 - 1)

    @tf.function(autograph=False)
    def share():
        @tf.autograph.experimental.do_not_convert
        def mine():
            first = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
            return tf.where(first, tf.constant(drawn, tf.int64), tf.constant(0, tf.int64))

        return strategy.reduce("SUM", strategy.run(mine), axis=None)

    return int(share())


def _summed(ops, losses):
    return ops.sum(ops.stack(losses)) if losses else 0.0


def _results(tracker, metrics) -> dict:
    values = {"loss": tracker.result()}
    if metrics is not None:
        result = metrics.result()
        values.update(result if isinstance(result, dict) else {metrics.name: result})
    return values


def _floats(values: dict) -> dict[str, float]:
    return {key: float(value) for key, value in values.items()}


class Loop:
    """Training and evaluation for one model on the active strategy.

    Args:
        strategy: the ``tf.distribute`` strategy whose scope the model was built in.
        model: the compiled model being trained (and validated).
        penalized: variables carrying an L1 penalty while training, with its weight.
        distillation: a frozen teacher and the term's weight, or None.
    """

    def __init__(self, strategy, model, penalized: tuple[Sequence, float] = ((), 0.0), distillation=None):
        import tensorflow as tf

        keras = import_keras()
        self.tf, self.keras, self.ops = tf, keras, keras.ops
        self.strategy, self.model, self.distillation = strategy, model, distillation
        self.l1_variables, self.l1 = list(penalized[0]), float(penalized[1])
        self.replicas = int(strategy.num_replicas_in_sync)
        with strategy.scope():
            self.tracker = keras.metrics.Mean(name="loss")
            self.eval_tracker = keras.metrics.Mean(name="loss")
        self._train: Callable | None = None
        self._tests: dict[int, tuple] = {}

    def _build(self, model, feeder: Feeder) -> None:
        """Create the model's metric, loss and optimizer state in cross-replica context, from one batch."""
        if feeder.current.batches:
            x, y = feeder._read(_chunks(feeder.current.batches[0], self.replicas)[0])
            with self.strategy.scope():
                # What fit does first; fit's own path to it (_maybe_symbolic_build) is what fails on workers.
                model._symbolic_build(data_batch=(x, y))

    def _losses(self, model, x, y, y_pred, training: bool):
        """``(task, penalty)`` on this replica: the mean loss of its slice, and the regularization penalty.

        Keras divides both by the number of replicas (its ``fit`` sums the
        replicas' gradients of equal slices); the loop weighs slices by their
        size instead, so it takes Keras's division back.
        """
        ops = self.ops
        penalty = _summed(ops, model.losses)
        task = model.compute_loss(x=x, y=y, y_pred=y_pred, training=training) * self.replicas - penalty
        if training and self.l1:
            penalty = penalty + self.l1 * _summed(ops, [ops.sum(ops.abs(v)) for v in self.l1_variables])
        return task, penalty

    def _train_function(self):
        tf, ops, model = self.tf, self.ops, self.model
        replicas, tracker, distillation = self.replicas, self.tracker, self.distillation
        metrics = getattr(model, "_compile_metrics", None)
        variables = model.trainable_variables

        @tf.autograph.experimental.do_not_convert
        def replica_step(x, y, n_global):
            n_local = ops.cast(ops.shape(x)[0], "float32")
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                task, penalty = self._losses(model, x, y, y_pred, training=True)
                if distillation is not None:
                    task = distillation.loss(ops, task, x, y_pred)
                # This replica's share of the global batch's mean loss, and of the penalty.
                scaled = task * (n_local / n_global) + penalty / replicas
            gradients = tape.gradient(scaled, variables)
            model.optimizer.apply_gradients(zip(gradients, variables))
            tracker.update_state(task + penalty, sample_weight=n_local)
            if metrics is not None:
                metrics.update_state(y, y_pred)

        @tf.function(reduce_retracing=True, autograph=False)
        def train(iterator, n_global):
            x, y = next(iterator)
            self.strategy.run(replica_step, args=(x, y, n_global))
            return _results(tracker, metrics)

        return train

    def _test_function(self, model):
        tf, ops, tracker = self.tf, self.ops, self.eval_tracker
        metrics = getattr(model, "_compile_metrics", None)

        @tf.autograph.experimental.do_not_convert
        def replica_step(x, y):
            n_local = ops.cast(ops.shape(x)[0], "float32")
            y_pred = model(x, training=False)
            task, penalty = self._losses(model, x, y, y_pred, training=False)
            loss = task + penalty
            # An empty slice's mean loss is NaN: it weighs nothing, and must add nothing.
            tracker.update_state(tf.where(n_local > 0, loss, tf.zeros_like(loss)), sample_weight=n_local)
            if metrics is not None:
                metrics.update_state(y, y_pred)

        @tf.function(reduce_retracing=True, autograph=False)
        def test(iterator):
            x, y = next(iterator)
            self.strategy.run(replica_step, args=(x, y))

        @tf.function(autograph=False)
        def results():
            return _results(tracker, metrics)

        return test, results, metrics

    def evaluate(self, model, feeder: Feeder) -> dict[str, float]:
        """The loss and compiled metrics of ``model`` over one pass of ``feeder``, across all replicas."""
        key = id(model)
        if key not in self._tests or self._tests[key][0] is not model:
            self._build(model, feeder)
            self._tests[key] = (model, *self._test_function(model))
        _, test, results, metrics = self._tests[key]
        self.eval_tracker.reset_state()
        if metrics is not None:
            metrics.reset_state()
        plan, iterator = feeder.epoch()
        for _ in plan.batches:
            test(iterator)
        return _floats(results())

    def fit(
        self,
        train: Feeder,
        epochs: int,
        val: Feeder | None = None,
        before_step: Callable[[int], None] | None = None,
        after_step: Callable[[int, int, dict], None] | None = None,
        after_epoch: Callable[[int, dict], None] | None = None,
    ) -> dict[str, list[float]]:
        """Train ``epochs`` passes over ``train``; the history as Keras's (``loss``, metrics, ``val_...``).

        Args:
            train: the training batches (shuffled as they were made).
            epochs: passes.
            val: validation batches, evaluated after every epoch.
            before_step: called with the global step number before each step (mask and rate updates).
            after_step: called with the epoch (from 1), the step in it (from 1) and the running logs.
            after_epoch: called with the epoch (from 1) and its logs (validation included).
        """
        if self._train is None:
            self._build(self.model, train)
            self._train = self._train_function()
        train_step = self._train
        metrics = getattr(self.model, "_compile_metrics", None)
        history: dict[str, list[float]] = {}
        step = 0
        for epoch in range(1, epochs + 1):
            self.tracker.reset_state()
            if metrics is not None:
                metrics.reset_state()
            plan, iterator = train.epoch()
            logs: dict[str, float] = {}
            for k, size in enumerate(plan.sizes, 1):
                if before_step is not None:
                    before_step(step)
                logs = _floats(train_step(iterator, self.tf.constant(float(size))))
                if after_step is not None:
                    after_step(epoch, k, logs)
                step += 1
            if val is not None:
                logs.update({f"val_{key}": value for key, value in self.evaluate(self.model, val).items()})
            for key, value in logs.items():
                history.setdefault(key, []).append(value)
            if after_epoch is not None:
                after_epoch(epoch, logs)
        return history
