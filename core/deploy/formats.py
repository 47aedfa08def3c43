"""The deployment formats prunectl exports to, the extra each needs, and LiteRT's quantization modes."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from prunectl.core.errors import OptionError, SetupError


@dataclass(frozen=True)
class ExportFormat:
    """One deployment format.

    Attributes:
        name: the user-facing name (``--format``).
        keras_format: the name ``keras.Model.export`` takes.
        suffix: the exported file's suffix; ``""`` for a folder (a SavedModel).
        extra: the pip extra that installs its converter and runtime, or None when TensorFlow suffices.
        modules: the modules that must import for the export and its runtime.
        runtime: the runtime its outputs and latency are measured in.
    """

    name: str
    keras_format: str
    suffix: str
    extra: str | None
    modules: tuple[str, ...]
    runtime: str

    @property
    def is_directory(self) -> bool:
        return not self.suffix

    def default_path(self, model: Path) -> Path:
        """Where the export goes by default: beside ``model``, its stem with this format's suffix."""
        return model.with_name(model.stem + (self.suffix or ".saved_model"))


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("litert", "litert", ".tflite", "litert", ("ai_edge_litert.interpreter",), "LiteRT (XNNPACK)"),
        ExportFormat("onnx", "onnx", ".onnx", "onnx", ("tf2onnx", "onnx", "onnxruntime"), "onnxruntime (CPU)"),
        ExportFormat("saved_model", "tf_saved_model", "", None, ("tensorflow",), "tf.saved_model"),
    )
}

#: LiteRT post-training quantization modes; ``int8`` needs representative data.
QUANTIZE = ("dynamic", "float16", "int8")


def export_format(name: str) -> ExportFormat:
    """The :class:`ExportFormat` called ``name``.

    Raises:
        OptionError: an unknown name.
    """
    if name not in FORMATS:
        raise OptionError(f"{{format}} must be one of {', '.join(FORMATS)}. Received: {name!r}", "format")
    return FORMATS[name]


def check_quantize(fmt: ExportFormat, quantize: str | None, has_data: bool) -> None:
    """Raise :class:`OptionError` if ``quantize`` does not fit ``fmt`` or lacks the data it needs."""
    if quantize is None:
        return
    if quantize not in QUANTIZE:
        raise OptionError(f"{{quantize}} must be one of {', '.join(QUANTIZE)}. Received: {quantize!r}", "quantize")
    if fmt.name != "litert":
        raise OptionError(f"{{quantize}} applies to the litert format only. Received: format={fmt.name!r}", "quantize")
    if quantize == "int8" and not has_data:
        raise OptionError(
            "{quantize} int8 needs {data} as its representative dataset. Received: no data", "quantize", "data"
        )


def require(fmt: ExportFormat) -> None:
    """Import what ``fmt`` needs, or say which pip extra installs it.

    Raises:
        SetupError: a module is missing, naming the ``pip install`` command.
    """
    for module in fmt.modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            if fmt.extra is None:
                raise SetupError(f"exporting to {fmt.name} needs {module}. Received: {exc}") from None
            raise SetupError(
                f"exporting to {fmt.name} needs prunectl[{fmt.extra}]: pip install 'prunectl[{fmt.extra}]'. "
                f"Received: no module named {module!r}"
            ) from None
