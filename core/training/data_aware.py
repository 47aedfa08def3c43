"""Data-aware one-shot weight pruning: Wanda and SparseGPT on calibration inputs, no training.

Both criteria prune each weight tensor to its sparsity (or N:M pattern, or
blocks) from what the layer's inputs are on calibration data:

* **wanda** (Sun et al. 2023) scores a weight by ``|w_ij| * ||x_i||``, the norm of
  its input feature over every calibration sample and position, and prunes the
  same fraction of every output (each column of the weight's matrix view,
  :func:`~prunectl.core.weights.patterns.as_matrix`).
* **sparsegpt** (Frantar & Alistarh 2023) solves, per layer, for the weights that
  best keep the layer's output ``X W`` on the calibration inputs: with
  ``H = X^T X`` (dampened by 1% of its mean diagonal), columns are visited in
  blocks of 128 rows of the matrix view, the mask chosen adaptively by
  ``w^2 / [H^-1]_ii^2`` and every pruned weight's error spread over the kept
  weights still to come (optimal brain surgeon updates), in float64.

Layers are pruned one after another in the order the model calls them, each
layer's inputs recorded from the model as already pruned, so a layer's
reconstruction also makes up for the error of the layers before it.

What a weight's input features are: for a ``kernel`` whose trailing input shape
is the kernel's input axes (Dense, EinsumDense, an RNN's input kernel) the rows
of the flattened input; for a Conv1D/Conv2D kernel the input's patches (im2col,
each patch ordered as the kernel's ``(dh, dw, c)`` rows); for other
convolutions (transposed, 3-D, grouped) the input channel of each row (Wanda's
per-channel norm; SparseGPT then has only ``diag(H)`` and makes no updates). A
weight with no readable input feature (an embedding, a depthwise kernel, a
recurrent kernel) is pruned by magnitude per output, and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from prunectl.core.errors import OptionError
from prunectl.core.layers import prunable_weight
from prunectl.core.structure.keras_graph import record_inputs
from prunectl.core.weights.catalog import keras_weight_owners
from prunectl.core.weights.masks import count_zeros, zeros_for
from prunectl.core.weights.patterns import (
    Pattern,
    as_matrix,
    block_prune_mask,
    from_matrix,
    nm_fits,
    nm_prune_mask,
)
from prunectl.core.weights.prune import WeightPruning, WeightResult
from prunectl.core.weights.selection import select_weights

DATA_AWARE = ("wanda", "sparsegpt")
# The first N calibration inputs of --data. On the digits benchmark models (sparsegpt, 70%, 2 seeds) accuracy
# was flat from 128 samples on (MLP 97.67% at 128, 256 and 512; CNN 94.3-94.6%) and 64 lost a point on the
# MLP; 256 leaves a margin for layers with more input rows, at about a second more on these models.
DEFAULT_CALIBRATION_SAMPLES = 256
BATCH_SIZE = 64
# SparseGPT's column block (the paper's) and dampening (1% of the mean diagonal of H).
BLOCK_COLUMNS = 128
DAMPENING = 0.01
# A layer's H is rows x rows float64: past this many input rows it is not formed (Wanda's norms still are).
MAX_HESSIAN_ROWS = 8192
# Input rows (samples x positions) kept per layer; a conv's patches beyond it are subsampled, seeded.
MAX_CALIBRATION_ROWS = 65536
# Layer classes whose kernel is applied to the input's patches, as im2col reads them.
_IM2COL = ("Conv1D", "Conv2D")


@dataclass
class LayerStats:
    """What the calibration inputs say about one weight's input rows (rows of its matrix view)."""

    norms: np.ndarray | None  # ||x_i|| per row, or None: no readable input feature
    hessian: np.ndarray | None = None  # X^T X, or None where not formed
    rows: int = 0  # calibration rows (samples x positions) seen
    how: str = ""


@dataclass(frozen=True)
class Reconstruction:
    """How well one pruned weight keeps its layer's output ``X W`` on the calibration data.

    Attributes:
        key: the weight's entry key.
        layer: the layer path.
        method: what pruned it: ``sparsegpt``, ``wanda``, or the fallback and why.
        rows: calibration rows its inputs gave (samples x positions).
        error: ``||X W - X W'|| / ||X W||`` for the weights chosen (None where ``H`` was not formed).
        magnitude_error: the same for magnitude pruning to the same sparsity and pattern.
    """

    key: str
    layer: str
    method: str
    rows: int
    error: float | None
    magnitude_error: float | None

    def to_dict(self) -> dict:
        return {
            "weight": self.key,
            "layer": self.layer,
            "method": self.method,
            "calibration_rows": self.rows,
            "output_error": _rounded(self.error),
            "magnitude_output_error": _rounded(self.magnitude_error),
        }


@dataclass
class DataAwareOutcome:
    """Per-weight results and the report section of a data-aware pruning run."""

    results: dict[str, WeightResult]
    layers: list[Reconstruction] = field(default_factory=list)
    criterion: str = ""
    samples: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "criterion": self.criterion,
            "calibration_samples": self.samples,
            "calibration_rows_limit": MAX_CALIBRATION_ROWS,
            "layers": [layer.to_dict() for layer in self.layers],
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def check_step(step: WeightPruning) -> None:
    """Refuse what a data-aware criterion cannot do: a threshold, global scope, or a per-layer threshold.

    Raises:
        OptionError: naming the criterion and what was received.
    """
    name = step.criterion
    if step.threshold is not None:
        raise OptionError(
            f"the {name} criterion prunes each weight tensor to a sparsity; give {{sparsity}} "
            f"(or {{pattern}}). Received: {{weight_criterion}} {name} with {{threshold}} {step.threshold:g}",
            "sparsity",
            "pattern",
            "weight_criterion",
            "threshold",
        )
    if step.scope == "global":
        raise OptionError(
            f"the {name} criterion prunes layer by layer (each layer's inputs come from the layers pruned before "
            f"it), so it has no global cut; use {{scope}} layer. Received: {{weight_criterion}} {name} "
            "with {scope} global",
            "scope",
            "weight_criterion",
        )
    for pattern, threshold, _ in step.layers:
        if threshold is not None:
            raise OptionError(
                f"the {name} criterion prunes to a sparsity; give the layer override a sparsity. "
                f"Received: {pattern!r}: threshold={threshold:g}"
            )


def prune_data_aware(
    model,
    step: WeightPruning,
    x: np.ndarray,
    samples: int = DEFAULT_CALIBRATION_SAMPLES,
    progress: Callable[[str], None] | None = None,
) -> DataAwareOutcome:
    """Prune a live Keras model's weights in place with ``step.criterion`` (wanda or sparsegpt) on inputs ``x``.

    Args:
        model: a built Keras model (pruned in place).
        step: the weight step (layer scope, a sparsity or an N:M pattern; see :func:`check_step`).
        x: calibration inputs; the first ``samples`` are used.
        samples: how many calibration inputs to use.
        progress: called with each layer's path as it is pruned.

    Returns:
        Per-weight results and the per-layer reconstruction errors.

    Raises:
        OptionError: a step the criterion cannot follow, or an unknown criterion.
        SelectionError: the step selects no weights.
    """
    if step.criterion not in DATA_AWARE:
        raise OptionError(
            f"a data-aware criterion is one of {', '.join(DATA_AWARE)}. Received: criterion={step.criterion!r}"
        )
    check_step(step)
    if samples < 1:
        raise OptionError(f"calibration samples must be at least 1. Received: calibration_samples={samples}")
    owners = keras_weight_owners(model)
    selected = select_weights([e for e, _, _ in owners], step.include, step.exclude)
    chosen = {e.key for e in selected}
    targets = [(e, v, layer) for e, v, layer in owners if e.key in chosen]
    x = np.asarray(x[:samples])
    outcome = DataAwareOutcome({}, criterion=step.criterion, samples=len(x))
    for entry, variable, layer in _call_order(model, targets, x):
        if progress is not None:
            progress(entry.layer)
        override = step.override_for(entry.layer)
        sparsity = override[1] if override else step.sparsity
        tensor = np.asarray(variable.numpy())
        before = count_zeros(tensor)
        spec = prunable_weight(entry.class_name, entry.weight)
        config = _config(layer)
        axes = spec.input_axes(tensor.shape, config) if spec is not None else None
        reason = _unfit(step.pattern, tensor.shape, axes)
        if reason is not None and step.pattern is not None:
            outcome.notes.append(f"{entry.key}: left as it was; it cannot hold {step.pattern.label}: {reason}")
            outcome.results[entry.key] = WeightResult(entry.key, before, before, 0.0)
            continue
        stats = _statistics(model, layer, entry.weight, tensor.shape, axes, x)
        pruned, record = _prune_tensor(step.criterion, tensor, axes, stats, sparsity, step.pattern)
        variable.assign(pruned.astype(tensor.dtype))
        outcome.results[entry.key] = WeightResult(entry.key, before, count_zeros(pruned.astype(tensor.dtype)), 0.0)
        outcome.layers.append(Reconstruction(entry.key, entry.layer, *record))
    return outcome


def _config(layer) -> dict | None:
    try:
        return layer.get_config()
    except (NotImplementedError, TypeError, AttributeError):
        return None


def _unfit(pattern: Pattern | None, shape: tuple, axes: tuple[int, ...] | None) -> str | None:
    if pattern is None or pattern.kind != "nm":
        return None
    return nm_fits(pattern, tuple(shape), axes)


def _call_order(model, targets: list, x: np.ndarray) -> list:
    """``targets`` in the order the model calls their layers (one eager call on a sample)."""
    order: list[int] = []
    with record_inputs([layer for _, _, layer in targets], order):
        model(x[:1], training=False)
    first = {key: i for i, key in reversed(list(enumerate(order)))}
    return sorted(targets, key=lambda t: first.get(id(t[2]), len(order)))


def _inputs(model, layer, x: np.ndarray):
    """Yield the inputs ``layer`` receives, batch by batch, from the model as it is now."""
    with record_inputs([layer]) as seen:
        for start in range(0, len(x), BATCH_SIZE):
            model(x[start : start + BATCH_SIZE], training=False)
            calls = seen[id(layer)]
            yield from calls
            calls.clear()


def _statistics(model, layer, weight: str, shape: tuple, axes: tuple[int, ...] | None, x: np.ndarray) -> LayerStats:
    """Input-row norms and ``X^T X`` of one weight on the calibration inputs, as far as they can be read."""
    rows = math.prod(shape[i] for i in axes) if axes else 0
    name = layer.__class__.__name__
    config = _config(layer) or {}
    channels_last = config.get("data_format", "channels_last") == "channels_last"
    if axes is None or weight != "kernel" or "Depthwise" in name or not channels_last:
        why = "no input feature per row" if axes is None else f"its inputs are not read for a {name} {weight}"
        return LayerStats(None, how=f"magnitude per output ({why})")
    im2col = name in _IM2COL and int(config.get("groups", 1) or 1) == 1
    conv = "kernel_size" in config
    in_shape = tuple(shape[i] for i in axes)
    form = rows <= MAX_HESSIAN_ROWS
    sq = np.zeros(rows, dtype=np.float64)
    hessian = np.zeros((rows, rows), dtype=np.float64) if form and (im2col or not conv) else None
    seen = 0
    cap = max(1, MAX_CALIBRATION_ROWS // max(1, math.ceil(len(x) / BATCH_SIZE)))
    rng = np.random.default_rng(0)
    for batch in _inputs(model, layer, x):
        batch = np.asarray(batch, dtype=np.float64)
        if im2col:
            matrix = _patches(batch, config, shape)
        elif not conv and batch.shape[batch.ndim - len(in_shape) :] == in_shape:
            matrix = batch.reshape(-1, rows)
        elif conv and batch.shape[-1] == shape[axes[-1]]:
            channel = np.square(batch.reshape(-1, batch.shape[-1])).sum(axis=0)
            sq += np.tile(channel, rows // batch.shape[-1])  # rows run over (window..., channel), channel fastest
            seen += batch.size // batch.shape[-1]
            continue
        else:
            return LayerStats(None, how=f"magnitude per output (a {name} input of shape {batch.shape[1:]})")
        if len(matrix) > cap:
            matrix = matrix[np.sort(rng.choice(len(matrix), cap, replace=False))]
        sq += np.square(matrix).sum(axis=0)
        if hessian is not None:
            hessian += matrix.T @ matrix
        seen += len(matrix)
    how = "im2col patches" if im2col else ("input rows" if hessian is not None or not conv else "input channels")
    return LayerStats(np.sqrt(sq), hessian, seen, how)


def _patches(batch: np.ndarray, config: dict, shape: tuple) -> np.ndarray:
    """The im2col rows of a Conv1D/Conv2D input: one row per output position, ordered as the kernel's rows."""
    import tensorflow as tf

    one_d = batch.ndim == 3
    strides = tuple(config.get("strides", 1))
    rates = tuple(config.get("dilation_rate", 1))
    sizes = tuple(shape[:-2])
    padding = str(config.get("padding", "valid")).lower()
    if one_d:
        if padding == "causal":  # causal: pad the past, then a valid convolution
            batch = np.pad(batch, ((0, 0), (rates[0] * (sizes[0] - 1), 0), (0, 0)))
            padding = "valid"
        batch, strides, rates, sizes = batch[:, None], (1, *strides), (1, *rates), (1, *sizes)
    patches = tf.image.extract_patches(
        tf.constant(batch),
        sizes=[1, *sizes, 1],
        strides=[1, *strides, 1],
        rates=[1, *rates, 1],
        padding=padding.upper(),
    )
    return patches.numpy().reshape(-1, math.prod(shape[:-1]))


def _allot(total: int, parts: int, size: int) -> np.ndarray:
    """Split ``total`` zeros over ``parts`` equal parts of ``size`` entries as evenly as whole numbers allow."""
    base, extra = divmod(total, parts)
    return np.minimum(size, base + (np.arange(parts) < extra))


def _mask(scores: np.ndarray, total: int, pattern: Pattern | None, per_column: bool) -> np.ndarray:
    """Which entries of a ``(rows, cols)`` score matrix to zero (True): ``total`` of them, or the pattern's."""
    if pattern is not None and pattern.kind == "nm":
        return nm_prune_mask(scores, pattern.a, pattern.b)
    if pattern is not None:
        return block_prune_mask(scores, pattern.a, pattern.b, total)
    mask = np.zeros(scores.shape, dtype=bool)
    if per_column:
        counts = _allot(total, scores.shape[1], scores.shape[0])
        order = np.argsort(scores, axis=0, kind="stable")
        for column, count in enumerate(counts):
            mask[order[:count, column], column] = True
    else:
        flat = np.argsort(scores, axis=None, kind="stable")[:total]
        mask.ravel()[flat] = True
    return mask


def _prune_tensor(
    criterion: str,
    tensor: np.ndarray,
    axes: tuple[int, ...] | None,
    stats: LayerStats,
    sparsity: float | None,
    pattern: Pattern | None,
) -> tuple[np.ndarray, tuple[str, int, float | None, float | None]]:
    """The pruned tensor and its report fields ``(method, rows, error, magnitude_error)``."""
    matrix = as_matrix(tensor, axes) if axes else tensor.reshape(-1, 1)
    weights = matrix.astype(np.float64)
    total = zeros_for(sparsity, weights.size) if sparsity is not None else 0
    magnitude = np.where(_mask(np.abs(weights), total, pattern, per_column=False), 0.0, weights)
    if stats.norms is None:
        pruned = np.where(_mask(np.abs(weights), total, pattern, per_column=True), 0.0, weights)
        method = stats.how
    elif criterion == "sparsegpt" and stats.hessian is not None:
        pruned = sparsegpt(weights, stats.hessian, total, pattern)
        method = f"sparsegpt on {stats.how}"
    else:
        scores = np.abs(weights) * stats.norms[:, None]
        pruned = np.where(_mask(scores, total, pattern, per_column=True), 0.0, weights)
        # Without H, SparseGPT's mask selection is Wanda's and it has nothing to update the kept weights by.
        method = f"wanda on {stats.how}"
    error = magnitude_error = None
    if stats.hessian is not None:
        error = output_error(stats.hessian, weights, pruned)
        magnitude_error = output_error(stats.hessian, weights, magnitude)
    out = from_matrix(pruned, tensor.shape, axes) if axes else pruned.reshape(tensor.shape)
    return out, (method, stats.rows, error, magnitude_error)


def output_error(hessian: np.ndarray, weights: np.ndarray, pruned: np.ndarray) -> float | None:
    """``||X W - X W'|| / ||X W||`` from ``H = X^T X`` alone (``||X D||^2 = tr(D^T H D)``).

    Returns:
        The relative error, or None where ``X W`` is zero.
    """
    diff = weights - pruned
    num = float(np.sum((hessian @ diff) * diff))
    den = float(np.sum((hessian @ weights) * weights))
    return math.sqrt(max(num, 0.0) / den) if den > 0 else None


def _inverse_cholesky(hessian: np.ndarray) -> np.ndarray:
    """The upper Cholesky factor of ``H^-1``, ``H`` dampened (more, where it is not positive definite)."""
    h = hessian.copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0  # an input that is always zero: any weight on it is free to prune
    damp = DAMPENING * float(np.mean(np.diag(h)))
    eye = np.eye(len(h))
    for attempt in range(6):
        try:
            inverse = np.linalg.inv(h + damp * (10**attempt) * eye)
            return np.linalg.cholesky(inverse).T
        except np.linalg.LinAlgError:
            continue
    raise OptionError(f"sparsegpt found no stable inverse of a layer's input Hessian. Received: {len(h)} input rows")


def sparsegpt(
    matrix: np.ndarray, hessian: np.ndarray, total: int, pattern: Pattern | None, block: int = BLOCK_COLUMNS
) -> np.ndarray:
    """SparseGPT on one weight's matrix view: prune and update the kept weights to keep ``X W``.

    Args:
        matrix: ``(rows, cols)`` weights, rows the input features (see ``patterns.as_matrix``).
        hessian: ``X^T X`` over the calibration inputs, ``(rows, rows)``.
        total: how many weights to zero (unstructured and blocks; N:M sets its own).
        pattern: N:M (mask chosen per group of M input rows) or blocks, or None.
        block: input rows per block of the lazy update (rounded to the pattern's group).

    Returns:
        The pruned matrix (float64): ``total`` zeros (N of every M for N:M, whole blocks for blocks).
    """
    w = matrix.T.astype(np.float64).copy()  # the paper's orientation: outputs x inputs
    outputs, rows = w.shape
    u = _inverse_cholesky(hessian)
    group = pattern.a if pattern is not None and pattern.kind == "block" else 1
    group = pattern.b if pattern is not None and pattern.kind == "nm" else group
    block = max(group, block - block % group)
    for i1 in range(0, rows, block):
        i2 = min(i1 + block, rows)
        w1, u1 = w[:, i1:i2].copy(), u[i1:i2, i1:i2]
        q1, err1 = np.zeros_like(w1), np.zeros_like(w1)
        diag = np.diag(u1)
        if pattern is None or pattern.kind == "block":
            # The block's share of the zeros, by its share of the rows, chosen by the OBS saliency.
            share = total * i2 // rows - total * i1 // rows
            mask1 = _mask((w1**2 / diag**2).T, share, pattern, per_column=False).T
        else:
            mask1 = np.zeros_like(w1, dtype=bool)
        for i in range(i2 - i1):
            if pattern is not None and pattern.kind == "nm" and i % pattern.b == 0:
                scores = w1[:, i : i + pattern.b] ** 2 / diag[i : i + pattern.b] ** 2
                mask1[:, i : i + pattern.b] = nm_prune_mask(scores.T, pattern.a, pattern.b).T
            column = w1[:, i]
            kept = np.where(mask1[:, i], 0.0, column)
            q1[:, i] = kept
            err = (column - kept) / u1[i, i]
            w1[:, i:] -= np.outer(err, u1[i, i:])
            err1[:, i] = err
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return w.T
