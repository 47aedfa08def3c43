"""``prunectl prune``: parse options, build a PruneRequest, run it, render the report."""

from __future__ import annotations

from pathlib import Path

import click

from prunectl.cli import render
from prunectl.cli.checks import checked as _checked
from prunectl.cli.checks import patterns
from prunectl.cli.common import UNSAFE_OPTION, finish_with_gates, gate_options, markdown_option
from prunectl.cli.export import FORMAT_CHOICE as EXPORT_CHOICE
from prunectl.cli.export import QUANTIZE_CHOICE
from prunectl.cli.export import summary_lines as export_lines
from prunectl.cli.help import GENERAL, Command, general_options, section
from prunectl.cli.structural import structural_options
from prunectl.cli.training import FINETUNE_NAMES, epoch_lines, evaluation_table, finetune_options, training_bars
from prunectl.core.options import (
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    ENGINES,
    SCOPES,
    WEIGHT_CRITERIA,
    validate_sparsity,
    validate_threshold,
)


@click.command(
    cls=Command,
    epilog="Every option can also come from the environment as PRUNECTL_PRUNE_<OPTION>, "
    "e.g. PRUNECTL_PRUNE_SPARSITY=0.8.",
)
@click.argument("model", type=click.Path(path_type=Path, dir_okay=True))
@section(
    "Weight pruning",
    click.option(
        "--threshold",
        type=float,
        callback=_checked(validate_threshold),
        help="Zero every prunable weight with |w| < T.",
    ),
    click.option(
        "--sparsity",
        type=float,
        callback=_checked(validate_sparsity),
        help="Zero the fraction S in [0, 1) of smallest-magnitude weights.",
    ),
    click.option(
        "--scope",
        type=click.Choice(SCOPES),
        default="layer",
        show_default=True,
        help="With --sparsity: each weight tensor reaches S (layer), or one cut over all (global).",
    ),
    click.option(
        "--include",
        multiple=True,
        metavar="REGEX",
        callback=patterns,
        help="Prune only layers whose name matches (repeatable).",
    ),
    click.option(
        "--exclude",
        multiple=True,
        metavar="REGEX",
        callback=patterns,
        help="Leave layers whose name matches (repeatable).",
    ),
    click.option(
        "--weight-criterion",
        type=click.Choice(WEIGHT_CRITERIA),
        default="magnitude",
        show_default=True,
        help="How weights are scored: magnitude |w| (no data), wanda (|w| x input norm) or sparsegpt "
        "(layer-wise reconstruction), both on --data as calibration.",
    ),
    click.option(
        "--pattern",
        metavar="N:M",
        help="N:M sparsity: in every group of M consecutive weights along the input axis, N are zero "
        "(2:4 is what sparse tensor cores run); sets the sparsity to N/M. A weight whose input axis is not a "
        "multiple of M (or that has none, an embedding) is left as it is; the report says which.",
    ),
    click.option(
        "--block",
        metavar="RxC",
        help="Block sparsity: zero whole blocks of R input rows by C output columns (e.g. 1x4), lowest mean "
        "|w| first, up to --sparsity S or every block whose mean |w| is below --threshold T.",
    ),
    click.option(
        "--calibration-samples",
        type=click.IntRange(min=1),
        metavar="N",
        help="With --weight-criterion wanda or sparsegpt: calibrate on the first N inputs of --data [default: 256].",
    ),
)
@structural_options
@section(
    "Search",
    click.option(
        "--target",
        metavar="KIND=VALUE",
        help="Reach a target instead of giving ratios: flops=0.5 or params=0.5 (fraction of the model's), "
        "size=2MB (bytes on disk), latency=5ms (per batch, as --benchmark measures), sparsity=0.9; within "
        "--max-accuracy-drop on --data (or --val-data when fine-tuning between stages). Exit 3 with the best "
        "model reached when the target cannot be met.",
    ),
    click.option(
        "--stages",
        type=click.IntRange(min=1),
        metavar="N",
        help="With --target: reach it in N stages, fine-tuning after each [default: 2 with --finetune-epochs, else 1].",
    ),
)
@finetune_options
@gate_options
@section(
    "Recipes",
    click.option(
        "--step",
        "steps",
        multiple=True,
        metavar="KEY=VALUE,...",
        help="One step of an ordered pipeline, as recipe keys (repeatable, run in the order given): "
        "'neuron-ratio=0.25,iterations=2', 'kind=finetune,finetune-epochs=2', 'sparsity=0.8'. "
        "Replaces a recipe's steps.",
    ),
    click.option(
        "--recipe",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="Read the pipeline (steps, per-layer overrides, [finetune], options) from a TOML recipe; "
        "options given here override it.",
    ),
    click.option(
        "--recipe-out",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="Write the fully resolved pipeline of this run as a recipe, to repeat it exactly.",
    ),
)
@section(
    "Output",
    click.option(
        "-o",
        "--output",
        type=click.Path(path_type=Path),
        default=None,
        help="Output model (default: <stem>.pruned<suffix> beside the input; the suffix picks the format).",
    ),
    click.option(
        "--report",
        "report_path",
        type=click.Path(path_type=Path),
        default=None,
        help="Where to write the JSON report (default: <output file name>.report.json, "
        "e.g. model.pruned.h5.report.json).",
    ),
    click.option(
        "--compression",
        type=click.Choice(list(COMPRESSIONS)),
        default=DEFAULT_COMPRESSION,
        show_default=True,
        help="Deflate of the output's weights, chosen per tensor (shuffle only on dense ones); every choice loads "
        "in stock Keras. fast: level 1 (ISA-L if installed); balanced: libdeflate 6; strong: libdeflate 12, smallest "
        "and slowest; none: uncompressed.",
    ),
    click.option(
        "--fold-batchnorm",
        is_flag=True,
        help="For inference: fold each BatchNormalization into the Dense or convolution before it, after every "
        "step (fine-tuning included); the outputs are checked on --data (else random inputs) and the fold "
        "recorded in the report.",
    ),
    click.option(
        "--engine",
        type=click.Choice(ENGINES),
        default="auto",
        show_default=True,
        help="file: h5py only, no TensorFlow; keras: load and save with Keras; auto: file unless converting.",
    ),
    click.option(
        "--keep-optimizer",
        is_flag=True,
        help="Keep the optimizer's trained state (dense, so the file stays large); by default a .h5 drops it "
        "and a .keras holds a fresh one.",
    ),
    click.option("--json", "as_json", is_flag=True, help="Print the JSON report to stdout (and nothing else there)."),
    click.option(
        "--export",
        type=EXPORT_CHOICE,
        default=None,
        help="Also export the pruned model for deployment, beside it (model.pruned.tflite, .onnx, "
        ".saved_model/), checked against Keras; with --benchmark, timed against the original in that runtime.",
    ),
    click.option(
        "--quantize",
        type=QUANTIZE_CHOICE,
        default=None,
        help="Quantize the --export litert model (int8 calibrates on --data).",
    ),
)
@markdown_option
@section(
    GENERAL,
    click.option("--force", is_flag=True, help="Overwrite an existing output model and report."),
    UNSAFE_OPTION,
)
@general_options("Print nothing on stderr but errors (and, when fine-tuning, one plain line per epoch).")
@click.pass_context
def prune(ctx, **params):
    """Shrink a saved model: remove units, zero weights, fine-tune.

    Runs the steps you ask for, in this order: structural pruning removes whole
    units and filters (--neuron-ratio, --neuron-threshold), weight pruning zeroes
    the smallest weights (--threshold, --sparsity), fine-tuning trains the rest
    with the pruned weights held at zero (--finetune-epochs with --data). The
    model is written compressed beside the input, with a JSON report; the
    quality gates then judge the result (exit 3 when one fails).

    \b
    Examples:
      prunectl prune model.h5 --threshold 0.01
      prunectl prune model.keras --sparsity 0.9 --scope global --exclude '^head$'
      prunectl prune model.h5 --sparsity 0.8 -o small.keras --json | jq .totals
      prunectl prune model.h5 --sparsity 0.8 --min-sparsity 0.8 \\
          --max-size 300000 --markdown - >> summary.md
      prunectl prune model.keras --sparsity 0.9 --finetune-epochs 8 \\
          --data train.npz --val-data test.npz -o tuned.keras
      prunectl prune model.keras --sparsity 0.95 --schedule polynomial \\
          --finetune-epochs 8 --data train.h5 --val-split 0.1
      prunectl prune model.keras --neuron-ratio 0.5 --round-to 8 --dry-run
      prunectl prune model.h5 --neuron-criterion activation \\
          --neuron-threshold 0.01 --data train.npz --benchmark
    """
    from prunectl.core.run.markdown import report_markdown

    request = _request(ctx, params)
    markdown, quiet = params["markdown"], params["quiet"]
    console = None if quiet else render.stderr_console()
    result = _run_with_progress(request, console)
    if not getattr(result, "written", True):
        _worker_line(result.to_dict(), quiet)
        finish_with_gates(result, quiet)
        return
    if params["as_json"]:
        render.emit_json(result.to_json())
    elif markdown is not None and str(markdown) == "-":
        render.emit_json(report_markdown(result.to_dict()))
    if console is not None:
        _summarize(console, result.to_dict())
        for line in export_lines(result.to_dict().get("export") or {}):
            console.print(line, highlight=False, markup=False)
    finish_with_gates(result, quiet)


def _request(ctx, params: dict):
    """Fold the options (and a recipe's values) into one ``PruneRequest``; core checks it."""
    from prunectl.core.run.request import build_request

    if params["recipe"] is None and not params["steps"]:
        return build_request(params)
    from prunectl.cli.recipe import merge_recipe

    _, structural, weights, merged, ordered = merge_recipe(ctx, params["recipe"], FINETUNE_NAMES, params["steps"])
    if ordered is None:
        return build_request(merged, weights, structural)
    return build_request(merged, steps=ordered)


_STAGES = {
    "loading": "loading {model}",
    "planning": "planning the structural step",
    "calibrating": "pruning layer by layer on the calibration data",
    "folding": "folding BatchNormalization",
}


def _run_with_progress(request, console):
    """Run the job, showing each stage as it starts and the plan as it is decided (in that order)."""
    from prunectl.cli.signals import checked
    from prunectl.core.run.job import run_prune

    def show_plan(plan: dict) -> None:
        render.plan_summary(console, plan, str(request.model))

    if console is None or not console.is_terminal:

        def plan_events(stage: str, value: dict | None) -> None:
            if stage == "plan" and value is not None and console is not None:
                show_plan(value)

        return run_prune(
            request,
            training=checked(epoch_lines(console)) if request.finetune else None,
            events=checked(plan_events),
        )
    with render.LiveProgress(console, *render.progress_columns()) as live:

        def events(stage: str, value: dict | None) -> None:
            if stage == "plan" and value is not None:
                show_plan(value)
            else:
                live.stage(_STAGES.get(stage, stage).format(model=request.model.name))

        def progress(key: str, done: int, total: int) -> None:
            live.stage(f"writing {key}", done, total)

        return run_prune(
            request, checked(progress), checked(training_bars(live)) if request.finetune else None, checked(events)
        )


def _worker_line(report: dict, quiet: bool) -> None:
    """What a non-chief worker says instead of a summary: it trained, and the chief writes the files."""
    strategy = report["finetune"]["strategy"]
    if not quiet:
        render.echo_error(
            f"{strategy['task']}: fine-tuned with the cluster ({strategy['replicas']} replicas); the chief writes "
            "the model and the report (give -o to keep this worker's copy too)"
        )


def _summarize(console, report: dict) -> None:
    render.structural_summary(console, report)
    if report["kind"] == "plan":
        return
    if any(row["pruned"] for row in report["layers"]):
        console.print(render.sparsity_table(report, f"Pruned {report['input']['path']}", console))
    size_in, size_out = report["input"]["size_bytes"], report["output"]["size_bytes"]
    prunable = report["totals"]["prunable"]
    console.print(
        f"Wrote {report['output']['path']}: {render.human_size(size_in)} -> {render.human_size(size_out)} "
        f"({report['size_ratio']:.2f}x), prunable sparsity {100 * prunable['sparsity']:.1f}%, "
        f"engine {report['engine']}, {report['seconds']:.2f} s"
    )
    if report.get("fold_batchnorm"):
        console.print(render.fold_line(report["fold_batchnorm"]))
    if report.get("search"):
        console.print(render.search_line(report["search"]))
    if report.get("steps"):
        console.print(render.steps_table(report, console))
    criterion = report.get("weight_criterion") or report.get("finetune", {}).get("weight_criterion")
    if criterion:
        console.print(render.criterion_line(criterion))
    if report.get("finetune", {}).get("evaluation"):
        console.print(evaluation_table(report, console))
    elif report.get("evaluation"):
        console.print(render.evaluation_line(report["evaluation"]))
    for note in report.get("notes", []):
        console.print(f"Note: {note}")
    console.print(f"Report: {report['report_path']}")
