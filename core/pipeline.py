"""The ``prune`` job end to end: check paths, prune, write the model and its report.

Data flows one way: open (validate) -> check outputs -> prune and write the
model -> build the report -> write the report. Nothing is written until the
input and every output path have been checked, and each file is written
atomically, so a failure leaves no output behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prunectl.core.atomic import check_output, write_text_atomic
from prunectl.core.errors import OptionError, OutputError
from prunectl.core.modelfile import H5_SUFFIXES, KERAS_SUFFIX, open_model_file
from prunectl.core.options import COMPRESSION_LEVELS, DEFAULT_COMPRESSION
from prunectl.core.prune import Progress, WeightPruning, prune_weights
from prunectl.core.report import prune_report, to_json


@dataclass(frozen=True)
class PruneRequest:
    """Everything one ``prune`` run needs; built by the CLI, read by :func:`run_prune`.

    Attributes:
        model: the input model path (never modified).
        weights: the weight-pruning step.
        output: output model path (default: ``<stem>.pruned<suffix>`` beside the input).
        report: report path (default: ``<output stem>.report.json`` beside the output).
        compression: one of ``options.COMPRESSION_LEVELS``.
        engine: ``auto``, ``file`` or ``keras``.
        force: replace existing outputs.
        unsafe: allow Lambda-layer code to be deserialized by the Keras engine.
        keep_optimizer: keep the optimizer's saved state in the output.
    """

    model: Path
    weights: WeightPruning
    output: Path | None = None
    report: Path | None = None
    compression: str = DEFAULT_COMPRESSION
    engine: str = "auto"
    force: bool = False
    unsafe: bool = False
    keep_optimizer: bool = False

    def options(self) -> dict:
        """The options as recorded in the report."""
        return {
            **self.weights.get_config(),
            "compression": self.compression,
            "engine": self.engine,
            "force": self.force,
            "unsafe": self.unsafe,
            "keep_optimizer": self.keep_optimizer,
        }


def default_output(model: Path) -> Path:
    """``model.h5`` -> ``model.pruned.h5`` beside it."""
    return model.with_name(f"{model.stem}.pruned{model.suffix}")


def default_report(output: Path) -> Path:
    """``model.pruned.h5`` -> ``model.pruned.report.json`` beside it."""
    return output.with_name(f"{output.stem}.report.json")


def run_prune(request: PruneRequest, progress: Progress | None = None) -> dict:
    """Run one prune job and return its report (also written to disk).

    Raises:
        PrunectlError: any problem with the input, the options or the outputs;
            nothing has been written when it is raised.
    """
    if request.compression not in COMPRESSION_LEVELS:
        raise OptionError(
            f"compression must be one of {', '.join(COMPRESSION_LEVELS)}. Received: compression={request.compression!r}"
        )
    output = request.output or default_output(request.model)
    if output.suffix.lower() not in H5_SUFFIXES + (KERAS_SUFFIX,):
        raise OutputError(f"output must end in .h5, .hdf5 or .keras. Received: {str(output)!r}")
    report_path = request.report or default_report(output)
    with open_model_file(request.model) as model:
        check_output(output, request.force, inputs=(request.model,))
        check_output(report_path, request.force, inputs=(request.model,))
        if report_path.resolve() == output.resolve():
            raise OutputError(f"report path is the output model's path. Received: {str(report_path)!r}")
        outcome = prune_weights(model, output, request.weights, COMPRESSION_LEVELS[request.compression],
                                engine=request.engine, unsafe=request.unsafe,
                                keep_optimizer=request.keep_optimizer, progress=progress)
        report = prune_report(outcome, model, output, request.options())
    report["report_path"] = str(report_path)
    write_text_atomic(report_path, to_json(report))
    return report
