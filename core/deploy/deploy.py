"""Export, verify in the runtime, and optionally time: the ``export`` block of a report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prunectl.core.deploy.export import export_model, remove_export
from prunectl.core.deploy.formats import ExportFormat
from prunectl.core.deploy.runtime import (
    accuracy,
    as_batch,
    compare,
    keras_outputs,
    open_runtime,
    predictions,
    time_runtimes,
)
from prunectl.core.errors import ExportError
from prunectl.core.io.atomic import discard, temporary_directory

#: Rows compared between Keras and the runtime when no data is given (seeded random inputs).
RANDOM_ROWS = 64
#: At most this many data rows are compared (all of them count for accuracy).
COMPARED_ROWS = 1024


def check_inputs(model, x=None) -> list[np.ndarray]:
    """The inputs the export is checked on: ``x``'s first rows, or seeded random values of the model's input shape."""
    from prunectl.core.structure.cost import make_batch

    if x is not None:
        return as_batch(x[:COMPARED_ROWS])
    return as_batch(make_batch(model, None, RANDOM_ROWS))


def deploy(
    model,
    target: Path,
    fmt: ExportFormat,
    quantize: str | None = None,
    x=None,
    y=None,
    benchmark: bool = False,
    baseline=None,
    batch_size: int = 256,
    repeats: int = 100,
    verbose: bool = False,
) -> dict:
    """Export ``model`` to ``target``, check it in ``fmt``'s runtime against Keras, and time it if asked.

    Args:
        model: the ``keras.Model`` to export.
        target: the output file or folder (checked by the caller).
        fmt: the format.
        quantize: LiteRT quantization mode, or None for a float export.
        x: data inputs (compared, int8's representative rows, the benchmark batch); random when None.
        y: data targets: with them, the accuracy of Keras and of the runtime is reported.
        benchmark: time the runtime on a batch of ``batch_size`` rows (``repeats`` rounds, fastest).
        baseline: with ``benchmark``, a model exported alike (to a temporary folder) and timed side by side
            in the same runtime (the original before pruning); without one, Keras's own forward pass is.
        batch_size: rows in the timed batch.
        repeats: timed rounds.
        verbose: let the converters print.

    Returns:
        The ``export`` block: format, path, bytes, runtime, quantize, max_abs_diff, tolerance,
        compared rows, and where measured, accuracy and benchmark.

    Raises:
        ExportError: the converter fails, or a float export's outputs differ from Keras's beyond tolerance
            (the export is then removed).
        SetupError: the format's extra is missing.
    """
    size = export_model(model, target, fmt, quantize, x, verbose)
    try:
        runtime = open_runtime(fmt, target, model)
        inputs = check_inputs(model, x)
        agreement = compare(model, runtime, inputs)
        if quantize is None and not agreement.within:
            raise ExportError(
                f"the {fmt.name} export's outputs differ from Keras's by {agreement.max_abs_diff:.3g} "
                f"(tolerance {agreement.tolerance:.3g}). Received: {str(target)!r}"
            )
    except BaseException:
        remove_export(target)
        raise
    block: dict = {
        "format": fmt.name,
        "path": str(target),
        "bytes": size,
        "runtime": runtime.name,
        "quantize": quantize,
        "max_abs_diff": agreement.max_abs_diff,
        "tolerance": None if quantize else agreement.tolerance,
        "compared_rows": agreement.rows,
        "compared_on": "data" if x is not None else "random inputs (seed 0)",
    }
    if x is not None and y is not None:
        rows = as_batch(x)
        keras_acc = accuracy(predictions(lambda b: keras_outputs(model, b), rows), np.asarray(y))
        if keras_acc is not None:
            block["accuracy"] = {"keras": keras_acc, "runtime": accuracy(predictions(runtime, rows), np.asarray(y))}
    if benchmark:
        block["benchmark"] = _benchmark(model, runtime, fmt, quantize, x, baseline, batch_size, repeats, target)
    return block


def _benchmark(model, runtime, fmt, quantize, x, baseline, batch_size, repeats, target: Path) -> dict:
    from prunectl.core.structure.cost import make_batch

    batch = as_batch(make_batch(model, x, batch_size))
    common = {"batch_size": batch_size, "repeats": repeats, "statistic": "min", "runtime": runtime.name}
    if baseline is None:
        keras_ms, runtime_ms = time_runtimes([_keras_call(model, batch), runtime], batch, repeats)
        return {**common, "keras_ms": keras_ms, "runtime_ms": runtime_ms, "keras_over_runtime": keras_ms / runtime_ms}
    folder = temporary_directory(target.parent, f".{target.name}.original.")
    try:
        original_path = folder / (f"original{fmt.suffix}" if fmt.suffix else "original")
        original_bytes = export_model(baseline, original_path, fmt, quantize, x)
        original = open_runtime(fmt, original_path, baseline)
        before, after = time_runtimes([original, runtime], batch, repeats)
    finally:
        discard(folder)
    return {
        **common,
        "original_bytes": original_bytes,
        "original_ms": before,
        "pruned_ms": after,
        "speedup": before / after,
    }


def _keras_call(model, batch: list[np.ndarray]):
    """Keras's traced forward pass (as ``cost.benchmark`` times it) taking the numpy batch the runtimes take."""
    from prunectl.core.structure.cost import as_tensors, forward_function

    single = batch[0] if len(batch) == 1 else batch
    function = forward_function(model, single)
    tensors = as_tensors(single)
    return lambda _batch: function(tensors)
