"""Export a live Keras model through Keras's own ``model.export``, atomically and quietly.

Keras's exporters write straight to the path they are given and print "Saved
artifact at ..." on stdout; TensorFlow's converter and tf2onnx print on both
streams from C++ and Python. prunectl's stdout carries only JSON with ``--json``,
so unless ``verbose`` the conversion runs with file descriptors 1 and 2 pointed
at ``/dev/null`` (rich writes to a pinned duplicate of the original stderr, see
``cli/quiet.py``, which this never touches), and it writes into a registered
temporary folder beside the target, renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from prunectl.core.deploy.formats import ExportFormat, require
from prunectl.core.errors import ExportError, first_line
from prunectl.core.io.atomic import discard, scratch_tempdir, temporary_directory, write_error

# tf2onnx logs an op it cannot convert and goes on, leaving a model no runtime loads:
# "Tensorflow op [sequential_1/discretization_1/Bucketize: Bucketize] is not supported".
_UNSUPPORTED = re.compile(r"op \[([^\]:]+): ([^\]]+)\] is not supported")
# "Failed to convert node 'model/mel_spectrogram/stft/rfft' (fct=...)"
_FAILED_NODE = re.compile(r"Failed to convert node '([^']+)'")
# The TFLite converter's MLIR locations name the op and its node:
# loc(callsite(fused["DenseBincount:", "functional_1/enc_1/bincount/DenseBincount@__inference_..."] at ...))
_MLIR_LOC = re.compile(r"fused\[\"([^\":]+):\", \"([^\"@]+)")


class _Records(logging.Handler):
    """Keeps every message logged to the logger it is attached to."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """File descriptors 1 and 2 and Python's streams pointed at nothing for the body, unless ``verbose``."""
    if verbose:
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    saved = []
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                saved.append((fd, os.dup(fd)))
                os.dup2(devnull, fd)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


def _layer_names(model) -> dict[str, str]:
    """Every layer's name, nested ones too, mapped to its class name."""
    found: dict[str, str] = {}

    def walk(layer) -> None:
        for inner in getattr(layer, "layers", None) or ():
            found.setdefault(inner.name, type(inner).__name__)
            walk(inner)

    walk(model)
    return found


def layer_of(model, node: str) -> tuple[str, str] | None:
    """The Keras layer (name, class) a converter's node name (``model_1/dense_2/MatMul``) belongs to.

    TensorFlow names each op by the name scopes of the layers that made it; a
    scope repeats a layer's name with ``_1``, ``_2`` appended when the name was
    used before in the process, so a segment matches a layer as it is or without
    that suffix. The innermost match wins (a nested model's layer over the model).
    """
    names = _layer_names(model)
    match = None
    for segment in node.split("/")[1:]:
        candidate = segment
        while candidate:
            if candidate in names:
                match = (candidate, names[candidate])
                break
            stripped = re.sub(r"_\d+$", "", candidate)
            candidate = stripped if stripped != candidate else ""
    return match


def _unconvertible(model, fmt: ExportFormat, node: str, op: str | None, reason: str) -> ExportError:
    layer = layer_of(model, node)
    where = f"layer {layer[0]!r} ({layer[1]})" if layer else f"node {node!r}"
    what = f"op {op} " if op else ""
    return ExportError(f"{fmt.name} cannot convert {where}: {what}{reason}. Received: node {node!r}")


def _conversion_error(model, fmt: ExportFormat, exc: Exception | None, logged: list[str]) -> ExportError | None:
    """The one-line error for a failed or incomplete conversion; None when nothing went wrong."""
    for message in logged:
        found = _UNSUPPORTED.search(message)
        if found:
            return _unconvertible(model, fmt, found.group(1), found.group(2).strip(), "is not supported by tf2onnx")
    if exc is None:
        return None
    text = str(exc)
    for found in _MLIR_LOC.finditer(text):
        if layer_of(model, found.group(2)):
            return _unconvertible(model, fmt, found.group(2), found.group(1), "is not a LiteRT builtin op")
    found = _FAILED_NODE.search(text)
    if found and layer_of(model, found.group(1)):
        return _unconvertible(model, fmt, found.group(1), None, first_line(exc)[:200])
    return ExportError(f"{fmt.name} export failed: {first_line(exc)[:300].rstrip('.')}. Received: format={fmt.name!r}")


def converter_options(quantize: str | None, representative=None) -> dict:
    """The TFLite converter attributes ``model.export(format="litert", **options)`` passes on for ``quantize``.

    Args:
        quantize: ``"dynamic"``, ``"float16"``, ``"int8"`` or None.
        representative: for int8, input rows (an array) whose activation ranges calibrate the quantization.

    Returns:
        Keyword arguments for Keras's LiteRT exporter (its ``_apply_converter_kwargs`` sets them).
    """
    import tensorflow as tf

    # Builtin ops only: Keras would let the converter fall back to TensorFlow ("Flex") ops, which the
    # standard LiteRT runtime cannot run; better the converter names the op and layer than a device fails.
    options: dict = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    if quantize is None:
        return options
    options["optimizations"] = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        options["target_spec"]["supported_types"] = [tf.float16]
    elif quantize == "int8":
        rows = representative[:200]

        def dataset():
            for row in rows:
                yield [row[None, ...]]

        options["representative_dataset"] = dataset
    return options


def _install(staged: Path, target: Path) -> None:
    """Move the finished ``staged`` export to ``target``, replacing a folder there (a SavedModel) last."""
    if target.is_dir() and not target.is_symlink():
        old = temporary_directory(target.parent, f".{target.name}.old.")
        os.rmdir(old)
        os.replace(target, old)
        try:
            os.replace(staged, target)
        except BaseException:
            os.replace(old, target)
            raise
        discard(old)
    else:
        os.replace(staged, target)


def export_model(
    model,
    target: Path,
    fmt: ExportFormat,
    quantize: str | None = None,
    representative=None,
    verbose: bool = False,
) -> int:
    """Export ``model`` to ``target`` in ``fmt`` through ``model.export``.

    Nothing is left behind on failure or Ctrl-C: the export is made in a registered
    temporary folder beside ``target`` and renamed into place when complete.

    Args:
        model: a built ``keras.Model``.
        target: the file (``.tflite``, ``.onnx``) or folder (SavedModel) to write; checked by the caller.
        fmt: the format (:data:`~prunectl.core.deploy.formats.FORMATS`).
        quantize: LiteRT post-training quantization (``dynamic``, ``float16``, ``int8``), or None.
        representative: input rows for int8 calibration.
        verbose: let Keras, TensorFlow and tf2onnx print what they print.

    Returns:
        The export's size in bytes (a folder's files summed).

    Raises:
        SetupError: the format's extra is not installed.
        ExportError: the converter cannot handle the model (naming the layer where it can tell).
        OutputError: an OS error while writing.
    """
    require(fmt)
    options = converter_options(quantize, representative) if fmt.name == "litert" else {}
    directory = target.parent if str(target.parent) else Path(".")
    try:
        staging = temporary_directory(directory, f".{target.name}.")
    except OSError as exc:
        raise write_error(target, exc) from None
    staged = staging / (f"model{fmt.suffix}" if fmt.suffix else "saved_model")
    records = _Records()
    logger = logging.getLogger("tf2onnx")
    logger.addHandler(records)
    try:
        failure: Exception | None = None
        with scratch_tempdir(), _quiet(verbose):
            try:
                _called(model)
                model.export(str(staged), format=fmt.keras_format, verbose=verbose, **options)
            except Exception as exc:  # converters raise bare ValueError and classes of their own
                failure = exc
        error = _conversion_error(model, fmt, failure, records.messages)
        if error is not None:
            raise error
        size = _size(staged)
        try:
            _install(staged, target)
        except OSError as exc:
            raise write_error(target, exc) from None
        return size
    finally:
        logger.removeHandler(records)
        discard(staging)


def _called(model) -> None:
    """Call ``model`` once on one row of zeros: tf2onnx's path refuses a model that was never called."""
    import numpy as np

    rows = [np.zeros((1, *(d or 1 for d in t.shape[1:])), dtype=t.dtype) for t in model.inputs]
    model(rows[0] if len(rows) == 1 else rows, training=False)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def remove_export(path: Path) -> None:
    """Remove an export written earlier (a file or a SavedModel folder)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
