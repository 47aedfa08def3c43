"""``prunectl prune``: parse options, build a PruneRequest, run it, render the report."""

from __future__ import annotations

from pathlib import Path

import click

from prunectl.cli import render
from prunectl.cli.checks import checked as _checked
from prunectl.cli.common import (data_gates, evaluation_options, finish_with_gates, gate_limits, gate_options,
                                 markdown_option)
from prunectl.cli.structural import neuron_step, structural_options
from prunectl.cli.training import epoch_lines, evaluation_table, finetune_options, finetune_options_from, training_bars
from prunectl.core.criteria import CRITERIA
from prunectl.core.errors import OptionError
from prunectl.core.options import (COMPRESSION_LEVELS, DEFAULT_COMPRESSION, ENGINES, SCOPES, compile_patterns,
                                   validate_sparsity, validate_threshold)


def _patterns(ctx, param, value):
    try:
        compile_patterns(value, f"--{param.name}")
    except OptionError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    return value


@click.command(epilog="""\b
Examples:
  prunectl prune model.h5 --threshold 0.01
  prunectl prune model.keras --sparsity 0.9 --scope global --exclude '^head$'
  prunectl prune model.h5 --sparsity 0.8 -o small.keras --json | jq .totals
  prunectl prune model.h5 --sparsity 0.8 --min-sparsity 0.8 --max-size 200000 --markdown - >> summary.md
  prunectl prune model.keras --sparsity 0.9 --finetune-epochs 8 --data train.npz --val-data test.npz
  prunectl prune model.keras --sparsity 0.95 --schedule polynomial --finetune-epochs 8 --data train.h5 --val-split 0.1
  prunectl prune model.keras --neuron-ratio 0.5 --round-to 8 --dry-run
  prunectl prune model.h5 --neuron-criterion activation --neuron-threshold 0.01 --data train.npz --benchmark
""")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=True))
@click.option("--threshold", type=float, callback=_checked(validate_threshold),
              help="Zero every prunable weight with |w| < T.")
@click.option("--sparsity", type=float, callback=_checked(validate_sparsity),
              help="Zero the fraction S in [0, 1) of smallest-magnitude weights.")
@click.option("--scope", type=click.Choice(SCOPES), default="layer", show_default=True,
              help="With --sparsity: each weight tensor reaches S (layer), or one cut over all (global).")
@click.option("--include", multiple=True, metavar="REGEX", callback=_patterns,
              help="Prune only layers whose name matches (repeatable).")
@click.option("--exclude", multiple=True, metavar="REGEX", callback=_patterns,
              help="Leave layers whose name matches (repeatable).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output model (default: <stem>.pruned<suffix> beside the input; the suffix picks the format).")
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None,
              help="Where to write the JSON report (default: <output stem>.report.json).")
@click.option("--compression", type=click.Choice(list(COMPRESSION_LEVELS)), default=DEFAULT_COMPRESSION, show_default=True,
              help="gzip level of the output's weights: none=0, fast=1, default=4, strong=9.")
@click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True,
              help="file: h5py only, no TensorFlow; keras: load and save with Keras; auto: file unless converting.")
@click.option("--keep-optimizer", is_flag=True,
              help="Keep the optimizer's saved state (dense, so the file stays large); dropped by default.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report to stdout (and nothing else there).")
@click.option("--force", is_flag=True, help="Overwrite an existing output model and report.")
@click.option("--unsafe", is_flag=True, help="Allow loading Lambda-layer code stored in the model (trusted files only).")
@click.option("-q", "--quiet", is_flag=True,
              help="Print nothing on stderr but errors (and, when fine-tuning, one plain line per epoch).")
@structural_options
@finetune_options
@gate_options
@markdown_option
def prune(model, threshold, sparsity, scope, include, exclude, output, report_path, compression, engine,
          keep_optimizer, as_json, force, unsafe, quiet, markdown,
          neuron_criterion, neuron_threshold, neuron_ratio, round_to, dry_run, benchmark, **extra):
    """Remove units and zero small weights of a saved Keras model, write it compressed, with a report."""
    from prunectl.core.pipeline import PruneRequest
    from prunectl.core.prune import WeightPruning
    from prunectl.core.markdown import report_markdown
    from prunectl.core.report import to_json

    if as_json and markdown is not None and str(markdown) == "-":
        raise click.UsageError("--json and --markdown - both write to stdout; give --markdown a file. "
                               "Received: --json --markdown -")
    if threshold is not None and sparsity is not None:
        raise click.UsageError(
            f"give only one of --threshold and --sparsity. Received: --threshold {threshold} --sparsity {sparsity}"
        )
    data = extra["data"]  # shared: fine-tuning trains on it, structural criteria and --benchmark read its inputs
    neurons = neuron_step(neuron_criterion, neuron_threshold, neuron_ratio, round_to, data, dry_run,
                          scope, include, exclude)
    gates = gate_limits(extra)
    evaluation = evaluation_options(gates, data, extra)
    if data is not None and extra["finetune_epochs"] is None and not (neurons and CRITERIA.get(neurons.criterion).needs_data) and not benchmark and not data_gates(gates):
        raise click.UsageError("--data is read by --finetune-epochs, an activation criterion, --benchmark or "
                               f"--max-accuracy-drop. Received: --data {data} without any of them")
    if threshold is None and sparsity is None and neurons is None:
        raise click.UsageError("give a pruning step: --threshold, --sparsity, --neuron-threshold or "
                               "--neuron-ratio. Received: none")
    weights = None if threshold is None and sparsity is None else WeightPruning(
        threshold=threshold, sparsity=sparsity, scope=scope, include=tuple(include), exclude=tuple(exclude))
    request = PruneRequest(
        model=model, weights=weights,
        output=output, report=report_path, compression=compression, engine=engine, force=force, unsafe=unsafe,
        keep_optimizer=keep_optimizer, neurons=neurons, data=data, dry_run=dry_run, benchmark=benchmark,
        evaluation=evaluation, gates=gates, markdown=None if markdown is None or str(markdown) == "-" else markdown,
        finetune=finetune_options_from(extra, sparsity is not None),
    )
    console = None if quiet else render.stderr_console()
    result = _run_with_progress(request, console)
    if as_json:
        render.emit_json(to_json(result))
    elif markdown is not None and str(markdown) == "-":
        render.emit_json(report_markdown(result))
    if console is not None:
        _summarize(console, result)
    finish_with_gates(result, quiet)


def _run_with_progress(request, console) -> dict:
    from prunectl.core.pipeline import run_prune

    if console is None or not console.is_terminal:
        return run_prune(request, training=epoch_lines(console) if request.finetune else None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("writing weights", total=None)

        def progress(key: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=f"writing {key}")

        return run_prune(request, progress, training_bars(bar) if request.finetune else None)


def _summarize(console, report: dict) -> None:
    render.structural_summary(console, report)
    if report["kind"] == "plan":
        return
    if any(row["pruned"] for row in report["layers"]):
        console.print(render.sparsity_table(report, f"Pruned {report['input']['path']}"))
    size_in, size_out = report["input"]["size_bytes"], report["output"]["size_bytes"]
    prunable = report["totals"]["prunable"]
    console.print(
        f"Wrote {report['output']['path']}: {render.human_size(size_in)} -> {render.human_size(size_out)} "
        f"({report['size_ratio']:.2f}x), prunable sparsity {100 * prunable['sparsity']:.1f}%, "
        f"engine {report['engine']}, {report['seconds']:.2f} s"
    )
    if report.get("finetune", {}).get("evaluation"):
        console.print(evaluation_table(report))
    elif report.get("evaluation"):
        console.print(render.evaluation_line(report["evaluation"]))
    for note in report.get("notes", []):
        console.print(f"Note: {note}")
    console.print(f"Report: {report['report_path']}")
