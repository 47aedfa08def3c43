"""``prunectl export``: one saved model exported for deployment, checked and timed in its runtime."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from prunectl.core.errors import OutputError
from prunectl.core.io.atomic import check_output, same_file


@dataclass(frozen=True)
class ExportRequest:
    """What ``prunectl export`` does.

    Attributes:
        model: the saved ``.h5``/``.keras`` model.
        format: ``litert``, ``onnx`` or ``saved_model``.
        output: the export's path; None for beside the model with the format's suffix.
        quantize: LiteRT quantization (``dynamic``, ``float16``, ``int8``), or None.
        data: a data file: inputs to compare on (and int8's representative data); with targets, accuracy.
        benchmark: time the export in its runtime next to Keras's forward pass.
        force: replace an existing output.
        unsafe: allow loading Python code (Lambda layers) stored in the model.
        verbose: let the converters print.
    """

    model: Path
    format: str
    output: Path | None = None
    quantize: str | None = None
    data: Path | None = None
    benchmark: bool = False
    force: bool = False
    unsafe: bool = False
    verbose: bool = False

    def __post_init__(self) -> None:
        from prunectl.core.deploy.formats import check_quantize, export_format

        check_quantize(export_format(self.format), self.quantize, self.data is not None)


def check_export_path(target: Path, fmt, force: bool, inputs: tuple[Path | None, ...]) -> None:
    """Raise :class:`OutputError` if the export cannot go to ``target`` (file or, for a SavedModel, folder).

    Raises:
        OutputError: a wrong suffix, a missing folder, an input, or an existing output without ``force``.
    """
    if fmt.is_directory:
        if not target.parent.is_dir() and str(target.parent):
            raise OutputError(f"output directory does not exist. Received: {str(target)!r}")
        if target.exists() and not target.is_dir():
            raise OutputError(f"a SavedModel is a folder; the output is a file. Received: {str(target)!r}")
        if any(s is not None and same_file(target, s) for s in inputs):
            raise OutputError(f"output would overwrite the input model. Received: {str(target)!r}")
        if target.exists() and not force:
            raise OutputError(f"output folder exists; pass --force to replace it. Received: {str(target)!r}")
        return
    if target.suffix.lower() != fmt.suffix:
        raise OutputError(f"a {fmt.name} export must end in {fmt.suffix}. Received: {str(target)!r}")
    check_output(target, force, inputs=inputs)


def run_export(request: ExportRequest) -> dict:
    """Export ``request.model`` and return the report (a dict with ``kind="export"``).

    Raises:
        PrunectlError: a bad model, data, output path, missing extra, or a failed conversion;
            nothing is left on disk then.
    """
    from prunectl.core.deploy.deploy import deploy
    from prunectl.core.deploy.formats import export_format, require
    from prunectl.core.io.keras_io import load_model
    from prunectl.core.io.modelfile import open_model_file
    from prunectl.core.run.report import Header, file_info

    fmt = export_format(request.format)
    target = request.output or fmt.default_path(request.model)
    check_export_path(target, fmt, request.force, (request.model, request.data))
    require(fmt)
    with open_model_file(request.model) as model_file:
        loaded = load_model(model_file, unsafe=request.unsafe)
        source = file_info(model_file.path, model_file.format)
    x = y = None
    if request.data is not None:
        from prunectl.core.training.data import calibration_inputs, read_dataset

        x = calibration_inputs(request.data, loaded.model)
        y = read_dataset(request.data).y
    block = deploy(loaded.model, target, fmt, request.quantize, x, y, request.benchmark, verbose=request.verbose)
    block["ratio_to_input"] = block["bytes"] / max(1, os.path.getsize(request.model))
    return {**Header.now("export").to_dict(), "input": source, "export": block}


def check_export(request, output: Path) -> Path | None:
    """Where ``prune --export`` writes (beside ``output``: its stem with the format's suffix), checked before work.

    Returns:
        The export's path, or None when ``request`` exports nothing.

    Raises:
        OutputError: as :func:`check_export_path`.
    """
    from prunectl.core.deploy.formats import export_format, require

    if request.export is None:
        return None
    fmt = export_format(request.export)
    target = fmt.default_path(output)
    check_export_path(target, fmt, request.force, (request.model, request.data))
    require(fmt)
    return target


def export_pruned(request, output: Path, target: Path) -> dict:
    """Export the pruned model written at ``output`` to ``target``; with ``request.benchmark``, time it against
    the original (exported alike, to a temporary folder) in the same runtime.

    The models are loaded from the files, whichever engine wrote the output. If the
    export fails, the pruned model is removed too: a run that fails leaves nothing.

    Returns:
        The report's ``export`` block.
    """
    from prunectl.core.deploy.deploy import deploy
    from prunectl.core.deploy.formats import export_format
    from prunectl.core.io.keras_io import load_model
    from prunectl.core.io.modelfile import open_model_file

    try:
        with open_model_file(output) as pruned_file:
            pruned = load_model(pruned_file, unsafe=request.unsafe).model
        original = None
        if request.benchmark:
            with open_model_file(request.model) as original_file:
                original = load_model(original_file, unsafe=request.unsafe).model
        x = y = None
        if request.data is not None:
            from prunectl.core.training.data import calibration_inputs, read_dataset

            x = calibration_inputs(request.data, pruned)
            y = read_dataset(request.data).y
        return deploy(
            pruned,
            target,
            export_format(request.export),
            request.quantize,
            x,
            y,
            request.benchmark,
            baseline=original,
        )
    except BaseException:
        output.unlink(missing_ok=True)
        raise
