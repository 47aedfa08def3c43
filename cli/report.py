"""``prunectl report``: the sparsity table of a model or a saved report, without TensorFlow."""

from __future__ import annotations

from pathlib import Path

import click

from prunectl.cli import render
from prunectl.cli.common import finish_with_gates, gate_limits, gate_options, markdown_option
from prunectl.cli.help import Command, general_options, section


@click.command(
    cls=Command,
    epilog="Every option can also come from the environment as PRUNECTL_REPORT_<OPTION>, "
    "e.g. PRUNECTL_REPORT_MIN_SPARSITY=0.8.",
)
@click.argument("target", metavar="MODEL_OR_REPORT")
@section(
    "Comparison",
    click.option(
        "--baseline",
        metavar="MODEL_OR_REPORT",
        default=None,
        help="Show sparsity before (baseline) and after (target) side by side.",
    ),
)
@section(
    "Data",
    click.option(
        "--data",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="Evaluate the model (and --baseline) on this data: .npz or .h5 (arrays x, y) or .csv.",
    ),
)
@gate_options
@section(
    "Output",
    click.option("--all-weights", is_flag=True, help="Also list biases, normalization and other unprunable weights."),
    click.option("--json", "as_json", is_flag=True, help="Print the JSON report to stdout (and nothing else there)."),
)
@markdown_option
@general_options("Print nothing on stderr but errors (no table, no passed gates).")
def report(target, baseline, data, all_weights, as_json, markdown, quiet, **gates):
    """Show the per-layer sparsity of a model or of a saved report.

    Reads a .h5/.keras model (with h5py, no TensorFlow) or a JSON report that
    prune wrote, from a file or from stdin (-). With --baseline, shows both side
    by side; with --data, also evaluates them; gates judge the result as prune's
    do (exit 3 when one fails).

    \b
    Examples:
      prunectl report model.h5
      prunectl report model.pruned.h5.report.json
      prunectl report model.pruned.keras --baseline model.keras
      prunectl prune model.h5 --sparsity 0.8 --json | \\
          prunectl report - --min-sparsity 0.8
      prunectl report tuned.keras --baseline model.keras --data test.npz \\
          --max-accuracy-drop 0.02
    """
    from prunectl.core.io.atomic import write_text_atomic
    from prunectl.core.run.inspect import ReportRequest, run_report, title
    from prunectl.core.run.markdown import report_markdown

    request = ReportRequest(target, baseline, data, all_weights, gate_limits(gates), markdown, as_json)
    result, before = run_report(request)
    current = result.to_dict()
    if markdown is not None:
        text = report_markdown(current)
        render.emit_json(text) if str(markdown) == "-" else write_text_atomic(markdown, text)
    if as_json:
        render.emit_json(result.to_json())
    if as_json or quiet:
        finish_with_gates(result, quiet=True)
        return
    console = render.stderr_console()
    if before is not None:
        compared = current["baseline"]
        console.print(render.comparison_table(compared["layers"], f"{title(baseline)} -> {title(target)}"))
        for label, key in (("params", "params"), ("FLOPs", "flops")):
            counts = compared.get(key)
            if counts and counts["before"] != counts["after"]:  # shown when units were removed
                change = counts["after"] / counts["before"] - 1 if counts["before"] else 0.0
                console.print(f"{label} {counts['before']:,} -> {counts['after']:,} ({100 * change:+.1f}%)")
        b, a = before.totals["prunable"], result.totals["prunable"]
        console.print(f"prunable sparsity {100 * b['sparsity']:.1f}% -> {100 * a['sparsity']:.1f}%")
    else:
        console.print(render.sparsity_table(current, title(target)))
    if current.get("evaluation"):
        console.print(render.evaluation_line(current["evaluation"]))
    finish_with_gates(result)
