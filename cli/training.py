"""The ``prune`` command's fine-tuning options and its training progress on stderr.

The options are added by one decorator and folded into one frozen
:class:`~prunectl.core.training.finetune.FinetuneOptions` by :func:`finetune_options_from`,
so ``cli/prune.py`` only passes them through.
"""

from __future__ import annotations

from pathlib import Path

import click

from prunectl.core.training.distribute import STRATEGIES
from prunectl.core.weights.schedules import SCHEDULES

_PATH = click.Path(path_type=Path, dir_okay=False)
# Options that mean nothing without --finetune-epochs, with their defaults.
_DEPENDENT = {"val_data": None, "val_split": None, "x_key": None, "y_key": None, "label_col": None,
              "batch_size": 32, "learning_rate": None, "optimizer": None, "loss": None, "metrics": (),
              "schedule": "oneshot", "initial_sparsity": 0.0, "prune_begin": 0.0, "prune_end": 0.5, "l1": 0.0,
              "seed": None, "strategy": "default", "plots": None}

# Every fine-tuning option's parameter name.
FINETUNE_NAMES = frozenset(_DEPENDENT) | {"finetune_epochs", "data"}

OPTIONS = [
    click.option("--finetune-epochs", type=click.IntRange(min=0), default=None,
                 help="After pruning, fine-tune N epochs with pruned weights held at 0 (0: only evaluate)."),
    click.option("--data", type=_PATH,
                 help="Data: .npz or .h5 (arrays x, y) or .csv (see --label-col). Fine-tuning trains on it; "
                      "activation criteria and --benchmark read its inputs."),
    click.option("--val-data", type=_PATH, help="Validation data (same format options as --data)."),
    click.option("--val-split", type=click.FloatRange(0, 1, min_open=True, max_open=True),
                 help="Hold out the last fraction F of --data for validation instead."),
    click.option("--x-key", help="Inputs' array name in .npz/.h5 data [default: x]."),
    click.option("--y-key", help="Targets' array name in .npz/.h5 data [default: y]."),
    click.option("--label-col", help="CSV column (header name or 0-based index) holding the targets."),
    click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Global batch size."),
    click.option("--learning-rate", type=click.FloatRange(0, min_open=True), help="Override the learning rate."),
    click.option("--optimizer", help="Keras optimizer name [default: the model's saved one, else adam]."),
    click.option("--loss", help="Keras loss name [default: the model's saved loss, else inferred]."),
    click.option("--metrics", multiple=True, help="Keras metric name (repeatable) [default: saved, else inferred]."),
    click.option("--schedule", type=click.Choice(SCHEDULES.names()), default="oneshot", show_default=True,
                 help="oneshot: prune, then fine-tune; polynomial: raise sparsity gradually (Zhu & Gupta)."),
    click.option("--initial-sparsity", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
                 help="polynomial: sparsity at the start of the pruning window."),
    click.option("--prune-begin", type=click.FloatRange(0, 1), default=0.0, show_default=True,
                 help="polynomial: window start, as a fraction of the training steps."),
    click.option("--prune-end", type=click.FloatRange(0, 1), default=0.5, show_default=True,
                 help="polynomial: step (fraction) where the final sparsity is reached."),
    click.option("--l1", type=click.FloatRange(0), default=0.0, show_default=True,
                 help="L1 penalty on the pruned layers' kernels while fine-tuning."),
    click.option("--seed", type=int, help="Seed for a reproducible run."),
    click.option("--strategy", type=click.Choice(STRATEGIES.names()), default="default", show_default=True,
                 help="mirrored: all local devices; multiworker: the workers in TF_CONFIG."),
    click.option("--plots", type=click.Path(path_type=Path, file_okay=False),
                 help="Write loss and weight-histogram PNGs to DIR (needs prunectl[plots])."),
]


def finetune_options(command):
    """Decorator adding the fine-tuning options to a click command."""
    for option in reversed(OPTIONS):
        command = option(command)
    return command


def finetune_options_from(values: dict, by_sparsity: bool):
    """Fold the fine-tuning option values into a ``FinetuneOptions``, or None without ``--finetune-epochs``.

    Args:
        values: the command's fine-tuning option values (consumed).
        by_sparsity: the pruning step is ``--sparsity`` (a gradual schedule needs one).

    Raises:
        click.UsageError: an option that needs ``--finetune-epochs``, ``--data`` or
            ``--sparsity`` is given without it.
    """
    from prunectl.core.training.finetune import FinetuneOptions

    epochs = values.pop("finetune_epochs")
    if epochs is None:
        given = [name for name, default in _DEPENDENT.items() if values[name] != default]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise click.UsageError(f"{flag} needs --finetune-epochs. Received: {flag} without --finetune-epochs")
        return None
    if values["data"] is None:
        raise click.UsageError(f"--finetune-epochs needs --data. Received: --finetune-epochs {epochs} without --data")
    if values["val_data"] is not None and values["val_split"] is not None:
        raise click.UsageError(f"give only one of --val-data and --val-split. "
                               f"Received: --val-data {values['val_data']} --val-split {values['val_split']}")
    if values["schedule"] != "oneshot" and not by_sparsity:
        raise click.UsageError(f"--schedule {values['schedule']} prunes to a sparsity; give --sparsity. "
                               f"Received: --schedule {values['schedule']} with --threshold")
    reader = {"x_key": values.pop("x_key"), "y_key": values.pop("y_key"), "label_col": values.pop("label_col")}
    if values["data"].suffix.lower() == ".csv" and (reader["x_key"] or reader["y_key"]):
        raise click.UsageError("--x-key and --y-key apply to .npz and .h5 data; a .csv takes --label-col. "
                               f"Received: {values['data']}")
    return FinetuneOptions(epochs=epochs, reader=tuple((k, v) for k, v in reader.items() if v is not None),
                           metrics=tuple(values.pop("metrics")), **values)


def epoch_lines(console):
    """Training progress as one plain line per epoch (on ``console``, or on stderr when it is None)."""

    def show(event) -> None:
        if event.kind == "epoch":
            line = f"epoch {event.epoch}/{event.epochs}: " + ", ".join(f"{k} {v:.4g}" for k, v in event.logs.items())
            console.print(line) if console is not None else click.echo(line, err=True)

    return show


def training_bars(bar):
    """Training progress on a live rich ``Progress``: an epochs bar and a steps bar with loss and metrics."""
    tasks = {}
    lines = epoch_lines(bar.console)

    def show(event) -> None:
        if not tasks:
            tasks["epochs"] = bar.add_task("fine-tuning epochs", total=event.epochs)
            tasks["steps"] = bar.add_task("steps", total=event.steps)
        logs = ", ".join(f"{k} {v:.4g}" for k, v in event.logs.items() if not k.startswith("val_"))
        bar.update(tasks["steps"], completed=event.step, description=f"epoch {event.epoch} steps: {logs}")
        if event.kind == "epoch":
            bar.update(tasks["epochs"], completed=event.epoch)
            lines(event)

    return show


def evaluation_table(report: dict):
    """A rich table of the validation loss and metrics before pruning, after pruning and after fine-tuning."""
    from rich.table import Table

    evaluation = report["finetune"]["evaluation"]
    table = Table(title="Evaluation on the validation data", title_justify="left")
    names = list(dict.fromkeys(k for values in evaluation.values() for k in values))
    table.add_column("When")
    for name in names:
        table.add_column(name, justify="right")
    for when, values in evaluation.items():
        table.add_row(when.replace("_", " "), *(f"{values[n]:.4f}" if n in values else "-" for n in names))
    return table
