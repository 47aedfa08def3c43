"""Run an exported model in its deployment runtime: check its outputs against Keras's and time it.

A :class:`Runtime` takes a batch (a list of input arrays, in the model's input
order) and returns the outputs as a list of arrays. Timing reuses the protocol of
:func:`prunectl.core.structure.cost.time_calls` (interleaved, order flipped each
round, outputs read back, the fastest round), so an original and a pruned model
are timed side by side in the runtime a user deploys to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunectl.core.deploy.formats import ExportFormat
from prunectl.core.errors import ExportError

#: Relative tolerance for a float export: max |runtime - keras| <= RTOL * max(1, max |keras|).
RTOL = 1e-4


def _output_order(name: str) -> tuple[int, str]:
    found = re.search(r"(\d+)$", name)
    return (int(found.group(1)) if found else 0, name)


class Runtime:
    """An exported model loaded in its runtime; call it with a batch (list of arrays) for a list of outputs."""

    name = ""

    def __call__(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError


class LiteRTRuntime(Runtime):
    """The LiteRT interpreter (``ai_edge_litert``) with its default XNNPACK delegate.

    The input tensors are resized to each batch's shape when it changes (the
    export keeps the batch dimension dynamic), so one call runs the whole batch.
    """

    name = "LiteRT (XNNPACK)"

    def __init__(self, path: Path, input_names: list[str], threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        signature = self.interpreter.get_signature_list()["serving_default"]
        details = {d["name"]: d for d in self.interpreter.get_input_details()}
        # Input tensors are named after the signature's inputs ("serving_default_image:0"); match the model's order.
        wanted = input_names if set(input_names) <= set(signature["inputs"]) else signature["inputs"]
        self.inputs = [self._detail(details, name)["index"] for name in wanted]
        runner = self.interpreter.get_signature_runner("serving_default")
        outputs = runner.get_output_details()
        self.outputs = [outputs[name]["index"] for name in sorted(outputs, key=_output_order)]
        self.shapes: list[tuple] = []

    @staticmethod
    def _detail(details: dict, name: str) -> dict:
        for tensor, detail in details.items():
            if tensor == name or tensor.startswith(f"serving_default_{name}:"):
                return detail
        return next(iter(details.values()))

    def __call__(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        shapes = [a.shape for a in batch]
        if shapes != self.shapes:
            for index, shape in zip(self.inputs, shapes):
                self.interpreter.resize_tensor_input(index, shape)
            self.interpreter.allocate_tensors()
            self.shapes = shapes
        for index, array in zip(self.inputs, batch):
            self.interpreter.set_tensor(index, array)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(index) for index in self.outputs]


class OnnxRuntime(Runtime):
    """An onnxruntime ``InferenceSession`` on the CPU."""

    name = "onnxruntime (CPU)"

    def __init__(self, path: Path, input_names: list[str]):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph classes
            raise ExportError(
                f"onnxruntime cannot load the export: {str(exc).splitlines()[0][:300]}. Received: {str(path)!r}"
            ) from None
        names = [i.name for i in self.session.get_inputs()]
        self.names = input_names if set(input_names) == set(names) else names

    def __call__(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.names, batch)))


class SavedModelRuntime(Runtime):
    """A SavedModel loaded with ``tf.saved_model.load``, called through its ``serve`` endpoint."""

    name = "tf.saved_model"

    def __init__(self, path: Path):
        import tensorflow as tf

        self.loaded = tf.saved_model.load(str(path))
        self.serve = self.loaded.serve

    def __call__(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        out = self.serve(batch[0] if len(batch) == 1 else batch)
        outs = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(o) for o in outs]


def open_runtime(fmt: ExportFormat, path: Path, model) -> Runtime:
    """Load the export at ``path`` in ``fmt``'s runtime; ``model`` gives the input order."""
    names = [t.name for t in model.inputs]
    if fmt.name == "litert":
        return LiteRTRuntime(path, names)
    if fmt.name == "onnx":
        return OnnxRuntime(path, names)
    return SavedModelRuntime(path)


def as_batch(x) -> list[np.ndarray]:
    """``x`` (an array or a list of arrays) as a list of contiguous arrays."""
    arrays = list(x) if isinstance(x, (list, tuple)) else [x]
    return [np.ascontiguousarray(a) for a in arrays]


def keras_outputs(model, batch: list[np.ndarray]) -> list[np.ndarray]:
    """``model``'s outputs on ``batch`` in inference mode, as a list of arrays."""
    out = model(batch[0] if len(batch) == 1 else batch, training=False)
    outs = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, (list, tuple)) else [out]
    return [np.asarray(o) for o in outs]


@dataclass(frozen=True)
class Agreement:
    """How far the runtime's outputs are from Keras's on the same inputs.

    Attributes:
        max_abs_diff: the largest absolute difference over every output.
        scale: the largest absolute Keras output (the tolerance is relative to it, at least 1).
        rows: how many input rows were compared.
    """

    max_abs_diff: float
    scale: float
    rows: int

    @property
    def tolerance(self) -> float:
        return RTOL * max(1.0, self.scale)

    @property
    def within(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def compare(model, runtime: Runtime, batch: list[np.ndarray], chunk: int = 256) -> Agreement:
    """Run ``batch`` through Keras and ``runtime`` (``chunk`` rows at a time) and compare the outputs."""
    rows = len(batch[0])
    worst, scale = 0.0, 0.0
    for start in range(0, rows, chunk):
        part = [a[start : start + chunk] for a in batch]
        for want, got in zip(keras_outputs(model, part), runtime(part)):
            worst = max(worst, float(np.max(np.abs(np.asarray(got, dtype=np.float64) - want))))
            scale = max(scale, float(np.max(np.abs(want))))
    return Agreement(worst, scale, rows)


def predictions(call, batch: list[np.ndarray], chunk: int = 256) -> np.ndarray:
    """The first output of ``call`` (Keras-like: batch -> list of arrays) over ``batch``, ``chunk`` rows at a time."""
    rows = len(batch[0])
    return np.concatenate([call([a[s : s + chunk] for a in batch])[0] for s in range(0, rows, chunk)])


def accuracy(outputs: np.ndarray, y: np.ndarray) -> float | None:
    """Top-1 accuracy of class scores ``outputs`` against labels ``y`` (indices or one-hot); None for no classifier."""
    if outputs.ndim != 2 or outputs.shape[1] < 2:
        return None
    labels = np.argmax(y, axis=-1) if y.ndim == 2 and y.shape[1] == outputs.shape[1] else np.asarray(y).reshape(-1)
    if len(labels) != len(outputs):
        return None
    return float(np.mean(np.argmax(outputs, axis=-1) == labels))


def time_runtimes(runtimes: list[Runtime], batch: list[np.ndarray], repeats: int = 100) -> list[float]:
    """Milliseconds per call of each runtime on ``batch``, timed interleaved; the fastest round of each."""
    from prunectl.core.structure.cost import time_calls

    samples = time_calls(runtimes, batch, repeats)
    return [round(min(spent) * 1e3, 4) for spent in samples]
