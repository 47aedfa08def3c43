"""What a model costs to run: parameters, multiply-adds, and measured CPU latency.

Multiply-adds (FLOPs in the report) count the Dense and convolution layers, which
dominate inference: each kernel entry is used once per output position (once per
input position for a transposed convolution). Which weights count, and where, is
each class's ``mac_weights`` in the layer table (:mod:`prunectl.core.layers`);
other layers count as zero.

Latency is the time of one call of the model's traced inference graph on a
fixed batch, the models interleaved, the fastest round kept (``benchmark``).
Part of every call is a fixed cost no pruning removes (``floor_ms``: the same
call of a graph that returns its input); a model that is little more than that
cannot get much faster. TensorFlow's inter-op thread pool adds to it: with
``TF_NUM_INTEROP_THREADS=1`` (set before TensorFlow starts) a graph of layers
that run one after another is executed on the calling thread, about 0.1 ms per
call on a 2-core machine instead of about 0.3 ms.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

from prunectl.core.layers import get_spec


def positions(shape: Sequence) -> int:
    """Positions a per-channel operation runs at: the product of the non-batch, non-channel dims."""
    return math.prod(int(d or 1) for d in tuple(shape)[1:-1])


def layer_macs(
    class_name: str,
    weight_shapes: Mapping[str, Sequence[int]],
    in_shape: Sequence,
    out_shape: Sequence,
    ordered: Sequence[tuple[str, Sequence[int]]] | None = None,
) -> int:
    """Multiply-adds of one call of a layer.

    Args:
        class_name: the Keras class, e.g. ``"Conv2D"``.
        weight_shapes: the layer's weight shapes by variable name.
        in_shape: the input shape (batch first).
        out_shape: the output shape (batch first).
        ordered: every ``(variable name, shape)`` of the layer in weight order, for a class whose
            spec counts its own (``LayerSpec.macs``: a MultiHeadAttention holds four kernels).
    """
    spec = get_spec(class_name)
    if spec is None:
        return 0
    if spec.macs is not None:
        shapes = ordered if ordered is not None else list(weight_shapes.items())
        return int(spec.macs([(n, tuple(int(d) for d in s)) for n, s in shapes], tuple(in_shape), tuple(out_shape)))
    where = {"input": positions(in_shape), "output": positions(out_shape)}
    return sum(
        math.prod(weight_shapes[name]) * where[at] for name, at in spec.mac_weights.items() if name in weight_shapes
    )


STATISTICS: dict[str, Callable[[list[float]], float]] = {"min": min, "median": statistics.median}


def forward_function(model, batch):
    """The model's inference forward pass as one traced graph function of ``batch``'s shapes.

    Timing ``model.predict_on_batch`` or an eager ``model(x)`` measures Keras'
    and Python's per-call work (data adapters, op-by-op dispatch) on top of the
    model's: about 0.7 ms per call at batch 256 on a 2-core machine, more than
    a small model's whole compute. A concrete ``tf.function`` of
    ``model(x, training=False)`` is what a deployed (SavedModel) graph runs:
    one graph call, the runtime's kernel fusions applied, every layer's work
    included. Other Keras backends get the plain inference call.

    Args:
        model: a Keras model.
        batch: an array, or a list of arrays for a multi-input model.

    Returns:
        A callable taking ``batch`` as tensors (see :func:`as_tensors`).
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return lambda x: model(x, training=False)
    import tensorflow as tf

    specs = tf.nest.map_structure(lambda a: tf.TensorSpec(a.shape, a.dtype), batch)
    return tf.function(lambda x: model(x, training=False), autograph=False).get_concrete_function(specs)


def as_tensors(batch):
    """``batch`` converted once to backend tensors, so no timed call pays for the conversion."""
    import keras

    return (
        [keras.ops.convert_to_tensor(a) for a in batch]
        if isinstance(batch, (list, tuple))
        else keras.ops.convert_to_tensor(batch)
    )


def empty_function(batch):
    """A traced function that returns its input: the per-call cost no model can go below."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return lambda x: x
    import tensorflow as tf

    specs = tf.nest.map_structure(lambda a: tf.TensorSpec(a.shape, a.dtype), batch)
    return tf.function(lambda x: tf.nest.map_structure(tf.identity, x), autograph=False).get_concrete_function(specs)


def time_calls(functions: Sequence, batch, repeats: int = 100, warmup: int = 5, number: int = 1) -> list[list[float]]:
    """Seconds per call of each function on the same ``batch``, one sample per round.

    The functions run interleaved, ``number`` calls each per round, and the
    order flips every round, so a slow spell of the machine, or running first
    or second, costs them alike. Each call's outputs are read back to host
    arrays, so the timed work is the whole inference.

    Args:
        functions: callables taking ``batch``.
        batch: inputs as :func:`as_tensors` returns them.
        repeats: timed rounds.
        warmup: untimed rounds first (caches, the runtime's first-call work).
        number: calls per function per round; a sample is their mean.

    Returns:
        For each function, its ``repeats`` samples in seconds.

    Raises:
        OptionError: when ``repeats`` or ``number`` is below 1 or ``warmup`` below 0.
    """
    import numpy as np

    from prunectl.core.errors import OptionError

    if repeats < 1 or number < 1 or warmup < 0:
        raise OptionError(
            "repeats and number must be at least 1 and warmup at least 0. "
            f"Received: repeats={repeats}, number={number}, warmup={warmup}"
        )
    samples: list[list[float]] = [[] for _ in functions]
    order = list(range(len(functions)))
    for round_ in range(warmup + repeats):
        for index in order if round_ % 2 == 0 else order[::-1]:
            function = functions[index]
            start = time.perf_counter()
            for _ in range(number):
                for out in _flat(function(batch)):
                    np.asarray(out)
            if round_ >= warmup:
                samples[index].append((time.perf_counter() - start) / number)
    return samples


def _flat(outputs) -> list:
    if isinstance(outputs, dict):
        return list(outputs.values())
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def measure_latency(
    models: Sequence, batch, repeats: int = 100, warmup: int = 5, number: int = 1, statistic: str = "min"
) -> list[float]:
    """Seconds per inference call of each model on the same ``batch``.

    Each model's forward pass is traced once (:func:`forward_function`) and the
    models are timed interleaved (:func:`time_calls`). ``"min"`` over rounds is
    the timeit convention: other processes only ever add time, so the fastest
    round is the closest to the model's own cost; ``"median"`` is the typical call
    on a machine as busy as this one was.

    Args:
        models: Keras models taking ``batch``.
        batch: the input batch (an array, or a list of arrays).
        repeats: timed rounds.
        warmup: untimed rounds first.
        number: calls per model per round.
        statistic: ``"min"`` or ``"median"`` of the rounds.

    Returns:
        One figure in seconds per model, in order.

    Raises:
        OptionError: on an unknown ``statistic`` or a bad count.
    """
    from prunectl.core.errors import OptionError

    if statistic not in STATISTICS:
        raise OptionError(f"statistic must be one of {', '.join(STATISTICS)}. Received: statistic={statistic!r}")
    functions = [forward_function(model, batch) for model in models]
    samples = time_calls(functions, as_tensors(batch), repeats, warmup, number)
    return [STATISTICS[statistic](spent) for spent in samples]


def make_batch(model, x=None, batch_size: int = 256):
    """A batch of ``batch_size`` rows for ``model``: ``x`` repeated, or random values when None."""
    import numpy as np

    if x is None:
        rng = np.random.default_rng(0)
        arrays = [rng.random((batch_size, *t.shape[1:])).astype(t.dtype) for t in model.inputs]
        return arrays if len(arrays) > 1 else arrays[0]
    return np.resize(x, (batch_size, *x.shape[1:]))


def benchmark(original, pruned, x=None, batch_size: int = 256, repeats: int = 100) -> dict:
    """Time ``original`` and ``pruned`` on the same batch, side by side.

    Both forward passes are traced graph functions (:func:`forward_function`),
    timed interleaved with a function that returns its input, whose time is
    the fixed per-call cost that no pruning removes (``floor_ms``).

    Args:
        original: the model before pruning.
        pruned: the model after pruning.
        x: inputs to draw the batch from (repeated up to ``batch_size`` rows); random values when None.
        batch_size: rows per call.
        repeats: timed rounds.

    Returns:
        Batch size, repeats, the statistic, the milliseconds per call of each model and of
        the empty call, and the speedup.
    """
    batch = make_batch(original, x, batch_size)
    functions = [forward_function(original, batch), forward_function(pruned, batch), empty_function(batch)]
    before, after, floor = (min(spent) for spent in time_calls(functions, as_tensors(batch), repeats))
    return {
        "batch_size": batch_size,
        "repeats": repeats,
        "statistic": "min",
        "original_ms": round(before * 1e3, 4),
        "pruned_ms": round(after * 1e3, 4),
        "floor_ms": round(floor * 1e3, 4),
        "speedup": before / after,
    }
