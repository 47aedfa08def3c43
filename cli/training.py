"""The ``prune`` command's fine-tuning options and its training progress on stderr.

The options are added by one decorator; ``core.run.request.build_request`` folds
them into one frozen :class:`~prunectl.core.training.finetune.FinetuneOptions`,
so ``cli/prune.py`` only passes them through.
"""

from __future__ import annotations

from pathlib import Path

import click

from prunectl.cli.checks import checked, number
from prunectl.cli.help import section
from prunectl.core.options import validate_seed
from prunectl.core.training.defaults import (
    DEFAULT_DISTILL,
    DEFAULT_LR_SCALE,
    DEFAULT_LR_SCHEDULE,
    DEFAULT_TEMPERATURE,
    DEFAULT_WARMUP,
    DEFAULT_WORKER_TIMEOUT,
)
from prunectl.core.training.distribute import STRATEGIES
from prunectl.core.weights.schedules import LR_SCHEDULES, SCHEDULES

_PATH = click.Path(path_type=Path, dir_okay=False)
# Every fine-tuning option's parameter name (core.run.request knows which refine --finetune-epochs).
FINETUNE_NAMES = frozenset(
    {
        "finetune_epochs",
        "data",
        "val_data",
        "val_split",
        "x_key",
        "y_key",
        "label_col",
        "batch_size",
        "learning_rate",
        "lr_scale",
        "optimizer",
        "loss",
        "metrics",
        "schedule",
        "initial_sparsity",
        "prune_begin",
        "prune_end",
        "l1",
        "distill",
        "temperature",
        "lr_schedule",
        "warmup",
        "seed",
        "strategy",
        "worker_timeout",
        "plots",
    }
)

# How a data file names its arrays or target column: read by every command that takes --data.
DATA_KEY_OPTIONS = [
    click.option("--x-key", help="Inputs' array name in .npz/.h5 data [default: x]."),
    click.option("--y-key", help="Targets' array name in .npz/.h5 data [default: y]."),
    click.option("--label-col", help="CSV column (header name or 0-based index) holding the targets."),
]


def batch_size_option(help: str):
    """``--batch-size N`` (an integer >= 1, default 32), with this command's own help text."""
    check = number("batch_size", 1, integer=True)
    return click.option("--batch-size", type=int, callback=check, default=32, show_default=True, help=help)


DATA_OPTIONS = [
    click.option(
        "--data",
        type=_PATH,
        help="Data: .npz or .h5 (arrays x, y) or .csv (see --label-col). Fine-tuning trains on it; "
        "activation criteria and --benchmark read its inputs.",
    ),
    click.option("--val-data", type=_PATH, help="Validation data (same format options as --data)."),
    click.option(
        "--val-split",
        type=float,
        callback=number("val_split", 0, 1, low_open=True, high_open=True),
        help="Hold out the last fraction F of --data for validation instead.",
    ),
    *DATA_KEY_OPTIONS,
    batch_size_option("Global batch size."),
]

OPTIONS = [
    click.option(
        "--finetune-epochs",
        type=int,
        callback=number("finetune_epochs", 0, integer=True),
        default=None,
        help="After pruning, fine-tune N epochs with pruned weights held at 0 (0: only evaluate).",
    ),
    click.option(
        "--learning-rate",
        type=float,
        callback=number("learning_rate", 0, low_open=True),
        help="Override the learning rate (also in the saved model).",
    ),
    click.option(
        "--lr-scale",
        type=float,
        callback=number("lr_scale", 0, low_open=True),
        default=DEFAULT_LR_SCALE,
        show_default=True,
        help="Without --learning-rate: fine-tune at this multiple of the model's own rate "
        "(the saved model keeps its own).",
    ),
    click.option("--optimizer", help="Keras optimizer name [default: the model's saved one, else adam]."),
    click.option("--loss", help="Keras loss name [default: the model's saved loss, else inferred]."),
    click.option("--metrics", multiple=True, help="Keras metric name (repeatable) [default: saved, else inferred]."),
    click.option(
        "--schedule",
        type=click.Choice(SCHEDULES.names()),
        default="oneshot",
        show_default=True,
        help="oneshot: prune, then fine-tune; polynomial: raise sparsity gradually (Zhu & Gupta).",
    ),
    click.option(
        "--initial-sparsity",
        type=float,
        callback=number("initial_sparsity", 0, 1, high_open=True),
        default=0.0,
        show_default=True,
        help="polynomial: sparsity at the start of the pruning window.",
    ),
    click.option(
        "--prune-begin",
        type=float,
        callback=number("prune_begin", 0, 1),
        default=0.0,
        show_default=True,
        help="polynomial: window start, as a fraction of the training steps.",
    ),
    click.option(
        "--prune-end",
        type=float,
        callback=number("prune_end", 0, 1),
        default=0.5,
        show_default=True,
        help="polynomial: step (fraction) where the final sparsity is reached.",
    ),
    click.option(
        "--l1",
        type=float,
        callback=number("l1", 0),
        default=0.0,
        show_default=True,
        help="L1 penalty while fine-tuning, on the pruned kernels (every prunable one without a weight step); "
        "a one-shot --threshold/--sparsity then prunes the trained weights.",
    ),
    click.option(
        "--distill",
        type=float,
        callback=number("distill", 0, 1),
        help="Distil from the model before pruning (frozen teacher): loss = (1 - ALPHA) * task + ALPHA * "
        "T^2 * KL(teacher_T || student_T) for classifiers, the MSE to the teacher's outputs otherwise; 0: off "
        + (f"[default: {DEFAULT_DISTILL:g} for classifiers, 0 otherwise]." if DEFAULT_DISTILL else "[default: 0]."),
    ),
    click.option(
        "--temperature",
        type=float,
        callback=number("temperature", 0, low_open=True),
        default=DEFAULT_TEMPERATURE,
        show_default=True,
        help="--distill: softening temperature T for classifiers.",
    ),
    click.option(
        "--lr-schedule",
        type=click.Choice(LR_SCHEDULES.names()),
        default=DEFAULT_LR_SCHEDULE,
        show_default=True,
        help="Learning rate over the fine-tuning run: constant, or cosine decay to ~0 by the last step.",
    ),
    click.option(
        "--warmup",
        type=float,
        callback=number("warmup", 0, 1, high_open=True),
        default=DEFAULT_WARMUP,
        show_default=True,
        help="Linear learning-rate warm-up over this fraction F of the steps, after the pruning at step 0.",
    ),
    click.option(
        "--seed", type=int, callback=checked(validate_seed), help="Seed in [0, 2**32 - 1] for a reproducible run."
    ),
    click.option(
        "--strategy",
        type=click.Choice(STRATEGIES.names()),
        default="default",
        show_default=True,
        help="mirrored: all local devices; multiworker: the workers in TF_CONFIG (run the same command on each).",
    ),
    click.option(
        "--worker-timeout",
        type=float,
        callback=number("worker_timeout", 0, low_open=True),
        default=DEFAULT_WORKER_TIMEOUT,
        show_default=True,
        help="multiworker: seconds to wait for the other workers (at start and at every step) before stopping "
        "with an error.",
    ),
    click.option(
        "--plots",
        type=click.Path(path_type=Path, file_okay=False),
        help="Write loss and weight-histogram PNGs to DIR (needs prunectl[plots]).",
    ),
]


def finetune_options(command):
    """Decorator adding the fine-tuning options (and the data options they read) to a click command."""
    return section("Fine-tuning", *OPTIONS)(section("Data", *DATA_OPTIONS)(command))


def epoch_lines(console):
    """Training progress as one plain line per epoch (on ``console``, or on the terminal stream when it is None)."""
    from prunectl.cli.render import terminal_stream

    def show(event) -> None:
        if event.kind == "epoch":
            line = f"epoch {event.epoch}/{event.epochs}: " + ", ".join(f"{k} {v:.4g}" for k, v in event.logs.items())
            console.print(line) if console is not None else click.echo(line, file=terminal_stream())

    return show


def training_bars(live):
    """Training progress on a ``render.LiveProgress``: "fine-tuning epoch k/N" over the steps, a line per epoch."""
    lines = epoch_lines(live.console)

    def show(event) -> None:
        loss = event.logs.get("loss")
        text = f"fine-tuning epoch {event.epoch}/{event.epochs}" + ("" if loss is None else f", loss {loss:.4g}")
        live.stage(text, event.step, event.steps)
        if event.kind == "epoch":
            lines(event)

    return show


def evaluation_table(report: dict, console=None):
    """A rich table of the validation loss and metrics before pruning, after pruning and after fine-tuning."""
    from prunectl.cli.render import Column, fitted_table, stderr_console

    evaluation, l1 = report["finetune"]["evaluation"], report["finetune"].get("l1")
    names = list(dict.fromkeys(k for values in evaluation.values() for k in values))
    columns = [
        Column("When"),
        *(Column("loss (without L1 penalty)" if l1 and name == "loss" else name, "right", fold="_") for name in names),
    ]
    rows = [
        ([when.replace("_", " "), *(f"{values[n]:.4f}" if n in values else "-" for n in names)], False)
        for when, values in evaluation.items()
    ]
    extra = {}
    if l1:
        with_penalty = "" if l1["loss_with_penalty"] is None else f", loss with it {l1['loss_with_penalty']:.4f}"
        extra = {"caption": f"L1 penalty after training: {l1['penalty']:.4f}{with_penalty}", "caption_justify": "left"}
    return fitted_table(console or stderr_console(), "Evaluation on the validation data", columns, rows, **extra)
