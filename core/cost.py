"""What a model costs to run: parameters, multiply-adds, and measured CPU latency.

Multiply-adds (FLOPs in the report) count the Dense and convolution layers, which
dominate inference: each kernel entry is used once per output position (once per
input position for a transposed convolution). Other layers count as zero.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Mapping, Sequence

# For each layer class, its kernel-like weights and the positions each entry is used at.
MAC_WEIGHTS: dict[str, dict[str, str]] = {
    "Dense": {"kernel": "output"},
    **{f"Conv{d}D": {"kernel": "output"} for d in (1, 2, 3)},
    **{f"Conv{d}DTranspose": {"kernel": "input"} for d in (1, 2, 3)},
    **{f"DepthwiseConv{d}D": {"kernel": "output"} for d in (1, 2)},
    **{f"SeparableConv{d}D": {"depthwise_kernel": "output", "pointwise_kernel": "output"} for d in (1, 2)},
}


def positions(shape: Sequence) -> int:
    """Positions a per-channel operation runs at: the product of the non-batch, non-channel dims."""
    return math.prod(int(d or 1) for d in tuple(shape)[1:-1])


def layer_macs(class_name: str, weight_shapes: Mapping[str, Sequence[int]], in_shape: Sequence,
               out_shape: Sequence) -> int:
    """Multiply-adds of one call of a layer.

    Args:
        class_name: the Keras class, e.g. ``"Conv2D"``.
        weight_shapes: the layer's weight shapes by variable name.
        in_shape: the input shape (batch first).
        out_shape: the output shape (batch first).
    """
    where = {"input": positions(in_shape), "output": positions(out_shape)}
    return sum(math.prod(weight_shapes[name]) * where[at]
               for name, at in MAC_WEIGHTS.get(class_name, {}).items() if name in weight_shapes)


def measure_latency(models: Sequence, batch, repeats: int = 20, warmup: int = 3) -> list[float]:
    """Median seconds per inference call of each model on the same ``batch``.

    The models run interleaved, one call each per round, so a slow spell of the
    machine costs them alike.

    Args:
        models: Keras models taking ``batch``.
        batch: the input batch.
        repeats: timed rounds.
        warmup: untimed rounds first (graph tracing, caches).
    """
    times: list[list[float]] = [[] for _ in models]
    for round_ in range(warmup + repeats):
        for model, spent in zip(models, times):
            start = time.perf_counter()
            model.predict_on_batch(batch)
            if round_ >= warmup:
                spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


def benchmark(original, pruned, x=None, batch_size: int = 256, repeats: int = 20) -> dict:
    """Time ``original`` and ``pruned`` on the same batch, side by side.

    Args:
        original: the model before pruning.
        pruned: the model after pruning.
        x: inputs to draw the batch from (repeated up to ``batch_size`` rows); random values when None.
        batch_size: rows per call.
        repeats: timed calls of each model.

    Returns:
        Batch size, repeats, the median milliseconds per call of each model, and the speedup.
    """
    import numpy as np

    if x is None:
        rng = np.random.default_rng(0)
        arrays = [rng.random((batch_size, *t.shape[1:])).astype(t.dtype) for t in original.inputs]
        batch = arrays if len(arrays) > 1 else arrays[0]
    else:
        batch = np.resize(x, (batch_size, *x.shape[1:]))
    before, after = measure_latency([original, pruned], batch, repeats)
    return {"batch_size": batch_size, "repeats": repeats, "original_ms": round(before * 1e3, 4),
            "pruned_ms": round(after * 1e3, 4), "speedup": before / after}
