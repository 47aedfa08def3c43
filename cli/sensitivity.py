"""``prunectl sensitivity``: prune each layer alone, measure the drop, show which layers are fragile."""

from __future__ import annotations

from pathlib import Path

import click

from prunectl.cli import render
from prunectl.cli.checks import checked, patterns
from prunectl.cli.common import UNSAFE_OPTION
from prunectl.cli.help import GENERAL, Command, general_options, section
from prunectl.cli.structural import structural_option
from prunectl.cli.training import DATA_KEY_OPTIONS, batch_size_option
from prunectl.core.options import DEFAULT_SPARSITIES, parse_neuron_ratios, parse_sparsities, validate_budget

_PATH = click.Path(path_type=Path, dir_okay=False)


@click.command(
    cls=Command,
    epilog="Every option can also come from the environment as PRUNECTL_SENSITIVITY_<OPTION>, "
    "e.g. PRUNECTL_SENSITIVITY_BUDGET=0.01.",
)
@click.argument("model", type=click.Path(path_type=Path, dir_okay=True))
@section(
    "Trials",
    click.option(
        "--sparsities",
        default=",".join(f"{s:g}" for s in DEFAULT_SPARSITIES),
        show_default=True,
        callback=checked(parse_sparsities),
        metavar="S1,S2,...",
        help="Sparsities in [0, 1) each layer is pruned to, one at a time.",
    ),
    click.option(
        "--neuron-ratios",
        callback=checked(parse_neuron_ratios),
        metavar="R1,R2,...",
        help="Test units instead of weights: each group of coupled units (a layer's filters, with the layers "
        "that share them) loses each fraction in (0, 1) of its units, one group at a time.",
    ),
    structural_option("--neuron-criterion"),
    structural_option("--round-to"),
    structural_option("--min-keep"),
    click.option(
        "--include",
        multiple=True,
        metavar="REGEX",
        callback=patterns,
        help="Test only layers whose name matches (repeatable).",
    ),
    click.option(
        "--exclude",
        multiple=True,
        metavar="REGEX",
        callback=patterns,
        help="Leave out layers whose name matches (repeatable).",
    ),
    click.option(
        "--budget",
        type=float,
        callback=checked(validate_budget),
        metavar="D",
        help="Choose per layer (or group) the largest sparsity (ratio) whose drop is at most D (accuracy, or loss), "
        "then check the choice pruned together and back off the most fragile picks until it holds D too.",
    ),
)
@section(
    "Data",
    click.option("--data", type=_PATH, help="Validation data: .npz or .h5 (arrays x, y) or .csv (see --label-col)."),
    *DATA_KEY_OPTIONS,
    batch_size_option("Evaluation batch size."),
    click.option("--loss", help="Keras loss name [default: the model's saved loss, else inferred]."),
    click.option("--metrics", multiple=True, help="Keras metric name (repeatable) [default: saved, else inferred]."),
)
@section(
    "Recipes",
    click.option(
        "--recipe-out",
        type=click.Path(path_type=Path),
        default=None,
        help="With --budget: write the choice as a recipe for prune --recipe (TOML).",
    ),
)
@section(
    "Output",
    click.option(
        "--json", "as_json", is_flag=True, help="Print the results as JSON to stdout (and nothing else there)."
    ),
)
@section(
    GENERAL,
    click.option("--force", is_flag=True, help="Overwrite an existing --recipe-out file."),
    UNSAFE_OPTION,
)
@general_options("Print nothing on stderr but errors.")
@click.pass_context
def sensitivity(
    ctx,
    model,
    data,
    sparsities,
    neuron_ratios,
    neuron_criterion,
    round_to,
    min_keep,
    include,
    exclude,
    budget,
    recipe_out,
    x_key,
    y_key,
    label_col,
    batch_size,
    loss,
    metrics,
    as_json,
    force,
    unsafe,
    quiet,
):
    """Prune each layer alone and show how much the metric drops.

    Each layer in turn is pruned to each of --sparsities while the others stay
    dense, and the model is evaluated on --data: the table shows which layers
    can lose many weights and which are fragile. With --budget, picks each
    layer's largest sparsity within the budget and can write it as a recipe
    for prune --recipe.

    With --neuron-ratios, whole units are removed instead: each group of
    coupled units in turn loses each fraction of its units, and the rebuilt
    model is evaluated; --budget then writes a structural recipe step.

    \b
    Examples:
      prunectl sensitivity model.keras --data val.npz
      prunectl sensitivity model.keras --data val.npz --neuron-ratios 0.25,0.5 \\
          --budget 0.01 --recipe-out units.toml
      prunectl sensitivity model.h5 --data val.npz --sparsities 0.5,0.8,0.9 \\
          --exclude '^head$'
      prunectl sensitivity model.h5 --data val.npz --budget 0.01 \\
          --recipe-out pipeline.toml
      prunectl prune model.h5 --recipe pipeline.toml
      prunectl sensitivity model.h5 --data val.npz --json | \\
          jq '.layers[] | {layer, trials}'
    """
    from click.core import ParameterSource

    from prunectl.core.run.sensitivity import SensitivityOptions
    from prunectl.core.structure.plan import NeuronPruning
    from prunectl.core.training.evaluate import EvalOptions

    given = {name for name in ctx.params if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)}
    structural = {"neuron_criterion", "round_to", "min_keep"} & given
    if neuron_ratios and "sparsities" in given:
        raise click.UsageError(
            "--sparsities tests weights and --neuron-ratios tests units; give one. "
            f"Received: --sparsities {','.join(f'{s:g}' for s in sparsities)} with --neuron-ratios "
            f"{','.join(f'{r:g}' for r in neuron_ratios)}"
        )
    if structural and not neuron_ratios:
        shown = " ".join(sorted(f"--{name.replace('_', '-')}" for name in structural))
        raise click.UsageError(f"{shown} set units trials; add --neuron-ratios R1,R2. Received: {shown} without it")
    neurons = None
    if neuron_ratios:
        neurons = NeuronPruning(
            **({"criterion": neuron_criterion} if neuron_criterion else {}),
            ratio=0.5,  # the trials set their own ratios
            round_to=round_to or 1,
            **({"min_keep": min_keep} if min_keep is not None else {}),
            include=tuple(include),
            exclude=tuple(exclude),
        )

    reader = tuple((k, v) for k, v in (("x_key", x_key), ("y_key", y_key), ("label_col", label_col)) if v is not None)
    options = SensitivityOptions(
        evaluation=None
        if data is None
        else EvalOptions(data, reader=reader, batch_size=batch_size, loss=loss, metrics=tuple(metrics)),
        sparsities=sparsities,
        include=tuple(include),
        exclude=tuple(exclude),
        budget=budget,
        neuron_ratios=tuple(neuron_ratios or ()),
        neurons=neurons,
    )
    console = None if quiet else render.stderr_console()
    result = _run_with_progress(model, options, recipe_out, force, unsafe, console)
    if as_json:
        render.emit_json(result.to_json())
    if console is not None:
        _summarize(console, result.to_dict())


def _run_with_progress(model, options, recipe_out, force, unsafe, console):
    from prunectl.cli.signals import checked
    from prunectl.core.run.sensitivity import COMBINED, run_sensitivity

    def run(progress=lambda *args: None):
        return run_sensitivity(model, options, recipe_out, force, unsafe, checked(progress))

    if console is None:
        return run()
    if not console.is_terminal:
        per_layer = len(options.neuron_ratios or options.sparsities)

        def lines(done: int, total: int, layer: str, sparsity: float) -> None:
            if layer == COMBINED:
                console.print("sensitivity: checked the picks together")
            elif done and done % per_layer == 0:
                console.print(f"sensitivity: {layer} done ({done}/{total} trials)")

        return run(lines)
    from rich.progress import TimeElapsedColumn

    with render.LiveProgress(console, *render.progress_columns(TimeElapsedColumn())) as live:

        def progress(done: int, total: int, layer: str, sparsity: float) -> None:
            # The first call comes once the dense model is loaded and measured, so no bar stands
            # on the screen while TensorFlow imports or a missing file is reported.
            if layer == COMBINED:
                text = "checking the picks together"
            else:
                text = "pruning each layer alone" if not done else f"{layer} at {100 * sparsity:g}%"
            live.stage(text, done, total)

        return run(progress)


def _drop_text(drop: float, budget: float | None) -> str:
    text = f"{drop:+.4f}"
    return f"[red]{text}[/red]" if budget is not None and drop > budget else text


def _summarize(console, result: dict) -> None:
    if result.get("mode") == "structural":
        _summarize_units(console, result)
        return
    metric = result["metric"]
    budget = result.get("budget")
    limit = budget["limit"] if budget else None
    what = f"{metric['name']} drop" if metric["higher_is_better"] else "loss increase"
    columns = [
        render.Column("Layer", fold=render.NAME_BREAKS),
        render.Column("Class", drop=1),
        render.Column("Params", "right"),
        *(render.Column(f"{100 * sparsity:g}%", "right") for sparsity in result["sparsities"]),
        *([render.Column(f"chosen (<= {limit:g})", "right", short="chosen")] if budget else []),
    ]
    rows = []
    for row in result["layers"]:
        chosen = budget["layers"].get(row["layer"]) if budget else None
        cells = [row["layer"], row["class"], f"{row['count']:,}"]
        cells += [_drop_text(t["drop"], limit) for t in row["trials"]]
        cells += [("dense" if chosen is None else f"{100 * chosen:g}%")] if budget else []
        rows.append((cells, False))
    table = render.fitted_table(
        console,
        f"{what.capitalize()} when one layer alone is pruned (dense {metric['name']} {metric['dense']:.4f})",
        columns,
        rows,
        caption=f"{result['model']['path']} on {result['evaluation']['data']}",
        caption_justify="left",
    )
    console.print(table)
    console.print(_fragility(result, console.width))
    if budget:
        zeroed = f" {100 * budget['sparsity']:.1f}% of the prunable weights zeroed."
        console.print(_budget_text(budget, metric["name"], "layer", "dense") + zeroed)
    if result.get("recipe_path"):
        console.print(f"Recipe: {result['recipe_path']}")


def _summarize_units(console, result: dict) -> None:
    metric = result["metric"]
    budget = result.get("budget")
    limit = budget["limit"] if budget else None
    what = f"{metric['name']} drop" if metric["higher_is_better"] else "loss increase"
    columns = [
        render.Column("Group", fold=render.NAME_BREAKS),
        render.Column("Units", "right"),
        *(render.Column(f"{100 * ratio:g}%", "right") for ratio in result["ratios"]),
        *([render.Column(f"chosen (<= {limit:g})", "right", short="chosen")] if budget else []),
    ]
    rows = []
    for row in result["groups"]:
        chosen = budget["groups"].get(row["pattern"]) if budget else None
        cells = [", ".join(row["layers"]), str(row["units"])]
        # A trial that removed nothing (round-to, min-keep) shows as "-": nothing was measured.
        cells += [_drop_text(t["drop"], limit) if t["units_after"] < row["units"] else "-" for t in row["trials"]]
        cells += [("whole" if chosen is None else f"{100 * chosen:g}%")] if budget else []
        rows.append((cells, False))
    table = render.fitted_table(
        console,
        f"{what.capitalize()} when one group of units alone loses a fraction of its units "
        f"(dense {metric['name']} {metric['dense']:.4f})",
        columns,
        rows,
        caption=f"{result['model']['path']} on {result['evaluation']['data']}; - removes nothing",
        caption_justify="left",
    )
    console.print(table)
    if budget:
        console.print(_budget_text(budget, metric["name"], "group", "whole"))
        cost = result.get("dense_cost") or {}
        if budget["groups"] and cost.get("params"):
            console.print(
                f"Params {cost['params']:,} -> {budget['params_after']:,}, "
                f"FLOPs {cost['flops']:,} -> {budget['flops_after']:,}."
            )
    if result.get("recipe_path"):
        console.print(f"Recipe: {result['recipe_path']}")


def _budget_text(budget: dict, metric: str, what: str, whole: str) -> str:
    """The budget's outcome in words: the picks alone, what the combined checks measured, and the final choice."""
    limit = budget["limit"]
    key = "layers" if what == "layer" else "groups"
    chosen = ", ".join(f"{_plain(name)} {100 * r:g}%" for name, r in budget[key].items()) or "none"
    left = ", ".join(_plain(name) for name in budget[f"left_{whole}"]) or "none"
    if "combined_drop" not in budget:
        return f"Budget {limit:g} {metric}: {chosen}; left {whole}: {left}."
    checks = budget["checks"]
    if not budget["fits"]:
        return (
            f"Budget {limit:g} {metric}: no combination fits. Each {what}'s pick alone is within the budget, but "
            f"every non-empty choice pruned together lost more ({len(checks)} checks, the last lost "
            f"{checks[-1]['drop']:.4f}); everything is left {whole}."
        )
    if not budget[key]:
        return f"Budget {limit:g} {metric}: no {what} is within the budget alone; everything is left {whole}."
    first = checks[0]["drop"]
    backed = len(checks) - 1
    together = (
        f"the picks alone lost {first:.4f} together; backed off {backed} notch{'es' if backed != 1 else ''} to "
        if backed
        else ""
    )
    return (
        f"Budget {limit:g} {metric}: {together}{chosen}, losing {budget['combined_drop']:.4f} pruned together; "
        f"left {whole}: {left}."
    )


def _plain(pattern: str) -> str:
    """A group's override pattern (``^conv1$``) as the layer name it anchors, for people."""
    import re

    match = re.fullmatch(r"\^(.*)\$", pattern)
    return re.sub(r"\\(.)", r"\1", match.group(1)) if match else pattern


def _fragility(result: dict, width: int):
    """Bars of each layer's drop at the highest tested sparsity, most fragile first."""
    from rich.table import Table

    top = result["sparsities"][-1]
    rows = sorted(
        ((row["layer"], row["trials"][-1]["drop"]) for row in result["layers"]), key=lambda pair: pair[1], reverse=True
    )
    largest = max((drop for _, drop in rows), default=0.0)
    # The bars take what the names and drops leave of the width, up to 40 columns.
    room = max(5, min(40, width - max((len(layer) for layer, _ in rows), default=0) - 12))
    table = Table(title=f"Fragile layers: drop at {100 * top:g}% sparsity", title_justify="left", box=None)
    table.add_column("Layer", no_wrap=True)
    table.add_column("Drop", justify="right")
    table.add_column("")
    for layer, drop in rows:
        width = round(room * drop / largest) if largest > 0 and drop > 0 else 0
        colour = "red" if largest > 0 and drop >= 0.5 * largest else "yellow" if drop > 0 else "green"
        table.add_row(layer, f"{drop:+.4f}", f"[{colour}]{'█' * width or '·'}[/{colour}]")
    return table
