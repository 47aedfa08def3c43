"""``prunectl export``: a saved model exported to LiteRT, ONNX or a SavedModel, checked in that runtime."""

from __future__ import annotations

import json
from pathlib import Path

import click

from prunectl.cli import render
from prunectl.cli.common import UNSAFE_OPTION
from prunectl.cli.help import Command, general_options, section
from prunectl.core.deploy.formats import FORMATS, QUANTIZE

FORMAT_CHOICE = click.Choice(list(FORMATS))
QUANTIZE_CHOICE = click.Choice(list(QUANTIZE))


def summary_lines(block: dict) -> list[str]:
    """The human summary of an ``export`` block: where, how big, how close to Keras, how fast (none for none)."""
    if not block:
        return []
    quantized = f", {block['quantize']} quantized" if block.get("quantize") else ""
    lines = [
        f"{block['format']}{quantized}: {block['path']} ({block['bytes']:,} bytes)",
        f"max |{block['runtime']} - keras| = {block['max_abs_diff']:.3g} on {block['compared_rows']} rows "
        f"of {block['compared_on']}",
    ]
    if block.get("accuracy"):
        acc = block["accuracy"]
        shown = "n/a" if acc["runtime"] is None else f"{acc['runtime']:.4f}"
        lines.append(f"accuracy: keras {acc['keras']:.4f}, {block['runtime']} {shown}")
    bench = block.get("benchmark")
    if bench:
        head = f"latency, batch {bench['batch_size']} (fastest of {bench['repeats']}): "
        if "pruned_ms" in bench:
            lines.append(
                head + f"original {bench['original_ms']:.3f} ms, pruned {bench['pruned_ms']:.3f} ms "
                f"in {bench['runtime']} ({bench['speedup']:.2f}x)"
            )
        else:
            lines.append(head + f"{bench['runtime']} {bench['runtime_ms']:.3f} ms, keras {bench['keras_ms']:.3f} ms")
    return lines


@click.command(
    cls=Command,
    epilog="Every option can also come from the environment as PRUNECTL_EXPORT_<OPTION>, "
    "e.g. PRUNECTL_EXPORT_FORMAT=litert.",
)
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@section(
    "Export",
    click.option("--format", "fmt", type=FORMAT_CHOICE, required=True, help="The deployment format."),
    click.option(
        "--quantize",
        type=QUANTIZE_CHOICE,
        default=None,
        help="LiteRT post-training quantization; int8 calibrates on --data.",
    ),
    click.option(
        "--benchmark",
        is_flag=True,
        help="Time the export in its runtime (LiteRT with XNNPACK, onnxruntime on the CPU) next to Keras.",
    ),
)
@section(
    "Data",
    click.option(
        "--data",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="Compare outputs on these inputs (.npz/.h5/.csv); with targets, also report accuracy; "
        "int8's representative data.",
    ),
)
@section(
    "Output",
    click.option(
        "-o",
        "--output",
        type=click.Path(path_type=Path),
        default=None,
        help="Where to write (default: beside MODEL, MODEL's stem + .tflite, .onnx or .saved_model/).",
    ),
    click.option("--force", is_flag=True, help="Replace an existing output."),
    click.option("--json", "as_json", is_flag=True, help="Print the JSON report to stdout (and nothing else there)."),
)
@section("General", UNSAFE_OPTION)
@general_options("Print nothing on stderr but errors.")
@click.pass_context
def export(ctx, model, fmt, quantize, benchmark, data, output, force, as_json, unsafe, quiet):
    """Export for deployment: LiteRT, ONNX or SavedModel, checked.

    Converts through Keras's own model.export, then runs the export in its
    runtime (the LiteRT interpreter with XNNPACK, onnxruntime, TensorFlow's
    SavedModel loader) on --data inputs or seeded random ones, and fails if
    a float export's outputs differ from Keras's by more than 1e-4 (relative).
    Quantized exports report the difference and, with labelled data, accuracy.

    \b
    Examples:
      prunectl export model.keras --format litert
      prunectl export model.pruned.keras --format onnx --benchmark
      prunectl export model.keras --format litert --quantize int8 \\
          --data calib.npz -o model.int8.tflite
      prunectl export model.h5 --format saved_model --json
    """
    from prunectl.core.run.export import ExportRequest, run_export

    request = ExportRequest(
        model, fmt, output, quantize, data, benchmark, force, unsafe, bool(ctx.obj and ctx.obj.get("verbose"))
    )
    result = run_export(request)
    if as_json:
        render.emit_json(json.dumps(result, indent=2) + "\n")
    if as_json or quiet:
        return
    console = render.stderr_console()
    for line in summary_lines(result["export"]):
        console.print(line, highlight=False, markup=False)
