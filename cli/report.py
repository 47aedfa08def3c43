"""``prunectl report``: the sparsity table of a model or a saved report, without TensorFlow."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from prunectl.cli import render
from prunectl.cli.common import data_gates, finish_with_gates, gate_limits, gate_options, markdown_option


def _read(target: str, all_weights: bool) -> dict:
    """A report for ``target``: a model file, a JSON report, or ``-`` (a report on stdin)."""
    from prunectl.core.errors import ReportError
    from prunectl.core.io.modelfile import open_model_file
    from prunectl.core.run.report import load_report, model_report

    if target == "-":
        return load_report(sys.stdin.read(), "<stdin>")
    path = Path(target)
    if path.suffix.lower() == ".json":
        if not path.is_file():
            raise ReportError(f"report file not found. Received: {target!r}")
        return load_report(path.read_text(encoding="utf-8", errors="replace"), target)
    with open_model_file(path) as model:
        return model_report(model, all_weights=all_weights)


def _is_model(target: str | None) -> bool:
    return target is not None and target != "-" and Path(target).suffix.lower() != ".json"


def _check_evaluation(target: str, baseline: str | None, data: Path | None, limits: dict) -> None:
    """Usage errors of ``--data`` and the gates measured on it."""
    needing = data_gates(limits.items())
    flag = f"--{needing[0]} {limits[needing[0]]}" if needing else ""
    if data is None:
        if needing and _is_model(target):
            raise click.UsageError(f"--{needing[0]} is measured on evaluation data; add --data EVAL. "
                                   f"Received: {flag} without --data")
        return
    if not _is_model(target):
        raise click.UsageError(f"--data evaluates a model, not a JSON report. Received: --data {data} with {target}")
    if baseline is not None and not _is_model(baseline):
        raise click.UsageError(f"--data evaluates --baseline too; give a .h5 or .keras baseline. "
                               f"Received: --baseline {baseline}")
    if needing and baseline is None:
        raise click.UsageError(f"--{needing[0]} compares the model with a baseline; add --baseline MODEL. "
                               f"Received: {flag} without --baseline")


@click.command(epilog="""\b
Examples:
  prunectl report model.h5
  prunectl report model.pruned.report.json
  prunectl report model.pruned.keras --baseline model.keras
  prunectl prune model.h5 --sparsity 0.8 --json | prunectl report - --min-sparsity 0.8
  prunectl report model.pruned.h5 --baseline model.h5 --data test.npz --max-accuracy-drop 0.01
""")
@click.argument("target", metavar="MODEL_OR_REPORT")
@click.option("--baseline", metavar="MODEL_OR_REPORT", default=None,
              help="Show sparsity before (baseline) and after (target) side by side.")
@click.option("--data", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Evaluate the model (and --baseline) on this data: .npz or .h5 (arrays x, y) or .csv.")
@click.option("--all-weights", is_flag=True, help="Also list biases, normalization and other unprunable weights.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report to stdout (and nothing else there).")
@gate_options
@markdown_option
def report(target, baseline, data, all_weights, as_json, markdown, **gates):
    """Show the per-layer sparsity of a .h5/.keras model or of a saved JSON report."""
    from prunectl.core.io.atomic import write_text_atomic
    from prunectl.core.run.gates import check_gates
    from prunectl.core.run.markdown import report_markdown
    from prunectl.core.run.report import compare_rows, to_json

    to_stdout = markdown is not None and str(markdown) == "-"
    if as_json and to_stdout:
        raise click.UsageError("--json and --markdown - both write to stdout; give --markdown a file. "
                               "Received: --json --markdown -")
    if markdown is not None and not to_stdout and not markdown.parent.is_dir():
        raise click.BadParameter(f"directory does not exist. Received: {str(markdown)!r}", param_hint="--markdown")
    limits = dict(gate_limits(gates))
    _check_evaluation(target, baseline, data, limits)
    current = _read(target, all_weights)
    before = _read(baseline, all_weights) if baseline else None
    if before is not None:
        current = {**current, "baseline": {"source": baseline, "layers": compare_rows(before, current),
                                           "totals": before["totals"]}}
    if data is not None:
        from prunectl.core.training.evaluate import EvalOptions, evaluate_files

        evaluation = evaluate_files(Path(target), Path(baseline) if baseline else None,
                                    EvalOptions(data, need_accuracy=True))
        current = {**current, "evaluation": evaluation}
    if limits:
        current = {**current, "gates": [g.to_dict() for g in check_gates(current, limits)]}
    if markdown is not None:
        text = report_markdown(current)
        render.emit_json(text) if to_stdout else write_text_atomic(markdown, text)
    if as_json:
        render.emit_json(to_json(current))
        finish_with_gates(current, quiet=True)
        return
    console = render.stderr_console()
    if before is not None:
        console.print(render.comparison_table(current["baseline"]["layers"], f"{baseline} -> {target}"))
        b, a = before["totals"]["prunable"], current["totals"]["prunable"]
        console.print(f"prunable sparsity {100 * b['sparsity']:.1f}% -> {100 * a['sparsity']:.1f}%")
    else:
        console.print(render.sparsity_table(current, target))
    if current.get("evaluation"):
        console.print(render.evaluation_line(current["evaluation"]))
    finish_with_gates(current)
