"""What pruning through a normalization over the channel axis does to its outputs.

LayerNormalization, RMSNormalization, UnitNormalization and a one-group
GroupNormalization take their statistics over the channels they normalize, so
removing input channels changes the outputs on the channels kept, even when the
removed ones were exactly zero. A plan that prunes through one carries a note
(see :func:`norm_notes`), and with calibration data the change measured by running
the layer before and after on the same batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from prunectl.core.structure.graph import NORMALIZES, ChannelGraph, LayerInfo, kept_features, layout_width


def norm_notes(
    graph: ChannelGraph, keep: dict[int, np.ndarray], x: np.ndarray | None = None, batch_size: int = 256
) -> tuple[dict, ...]:
    """One note per normalization over the channels whose input channels the plan removes.

    Args:
        graph: the model's channel graph.
        keep: the indices each group keeps, by group id.
        x: calibration inputs; when given, each note carries the measured change.
        batch_size: rows per inference call.

    Returns:
        Notes as plain values: ``layer``, ``class``, ``channels_before``, ``channels_after``,
        ``note``, and (None without ``x``) ``max_abs_change`` and ``mean_abs_change`` of the
        layer's outputs on the kept channels, next to their ``mean_abs_output`` for scale.
    """
    touched = []
    for info in graph.layers:
        if info.rule is None or info.rule.kind != "normalize" or info.in_layout is None:
            continue
        kept = kept_features(info.in_layout, keep)
        width = layout_width(info.in_layout)
        if len(kept) < width:
            touched.append((info, np.asarray(kept), width))
    changes = _measure(graph, touched, x, batch_size) if x is not None and touched else {}
    return tuple(
        {
            "layer": info.name,
            "class": info.class_name,
            "channels_before": width,
            "channels_after": len(kept),
            "note": f"{NORMALIZES}: removing {width - len(kept)} of its {width} input channels "
            "changes its outputs on the channels kept",
            **changes.get(info.name, dict.fromkeys(("max_abs_change", "mean_abs_change", "mean_abs_output"))),
        }
        for info, kept, width in touched
    )


def _shrunk(info: LayerInfo, kept: np.ndarray, channels_shape: tuple) -> Any:
    """A copy of the normalization for the kept channels, its per-channel weights sliced."""
    layer = info.layer
    copy = layer.__class__.from_config(layer.get_config())
    copy.build((None, *channels_shape[1:-1], len(kept)))
    sliced = {name: axis for name, axis, _ in info.rule.in_axes} if info.rule else {}
    values = [np.take(v.numpy(), kept, axis=sliced[v.name]) if v.name in sliced else v.numpy() for v in layer.weights]
    copy.set_weights(values)
    return copy


def _measure(graph: ChannelGraph, touched: list, x: np.ndarray, batch_size: int) -> dict[str, dict]:
    from prunectl.core.io.keras_io import import_keras
    from prunectl.core.structure.keras_graph import probe as probe_tensors

    keras = import_keras()
    # A shared normalization is measured at its first call; inside a nested model the trace reads its input.
    if graph.trace is not None:
        firsts = {id(call.layer): call.inputs[0] for call in reversed(graph.trace.calls) if call.inputs}
        run = probe_tensors(graph.trace, [firsts[id(info.layer)] for info, _, _ in touched])
    else:
        run = keras.Model(graph.inputs, [info.layer.input for info, _, _ in touched]).predict_on_batch
    copies = [_shrunk(info, kept, tuple(info.shapes[0])) for info, kept, _ in touched]
    largest = np.zeros(len(touched))
    totals = np.zeros((len(touched), 2))
    count = np.zeros(len(touched))
    for start in range(0, len(x), batch_size):
        inputs = run(x[start : start + batch_size])
        inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        for i, ((info, kept, _), copy, value) in enumerate(zip(touched, copies, inputs)):
            value = np.asarray(value)
            before = np.asarray(info.layer(value))[..., kept]
            after = np.asarray(copy(value[..., kept]))
            diff = np.abs(after.astype(np.float64) - before)
            largest[i] = max(largest[i], float(diff.max(initial=0.0)))
            totals[i] += (diff.sum(), np.abs(before).sum())
            count[i] += diff.size
    return {
        info.name: {
            "max_abs_change": float(largest[i]),
            "mean_abs_change": float(totals[i, 0] / max(count[i], 1)),
            "mean_abs_output": float(totals[i, 1] / max(count[i], 1)),
        }
        for i, (info, _, _) in enumerate(touched)
    }
