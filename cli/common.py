"""Options shared by several commands: quality gates and Markdown output."""

from __future__ import annotations

from pathlib import Path

import click

from prunectl.cli import render
from prunectl.core.run.gates import GATE_EXIT_CODE, GATES

def gate_options(command):
    """Add one ``--<gate>`` option per registered gate (help text from the gate's docstring)."""
    for name in reversed(GATES.names()):
        gate = GATES.get(name)
        summary = gate.__doc__.strip().splitlines()[0].rstrip(".")
        command = click.option(f"--{name}", type=gate.value_type, default=None, metavar=gate.metavar,
                               help=f"Gate: {summary[0].lower()}{summary[1:]} (else exit 3).")(command)
    return command


def markdown_option(command):
    return click.option("--markdown", type=click.Path(path_type=Path), default=None,
                        help="Also write the report as a Markdown table here (for CI job summaries).")(command)


def gate_limits(params: dict) -> tuple[tuple[str, float], ...]:
    """The ``(gate, limit)`` pairs given on the command line, in registry order.

    The gate options are taken out of ``params`` (a command's ``**extra``), and
    each limit is checked here, before any slow work (an evaluation) starts.

    Raises:
        OptionError: a bad limit.
    """
    limits = ((name, params.pop(name.replace("-", "_"), None)) for name in GATES.names())
    given = tuple((name, limit) for name, limit in limits if limit is not None)
    for name, limit in given:
        GATES.get(name)(limit)
    return given


def data_gates(limits) -> list[str]:
    """The given gates (``(name, limit)`` pairs) that are measured by evaluating on data."""
    return [name for name, _ in limits if GATES.get(name).needs_data]


def evaluation_options(limits, data: Path | None, params: dict):
    """The ``prune`` evaluation a data gate needs, or None (none given, or fine-tuning evaluates).

    Raises:
        click.UsageError: a data gate without the data it is measured on.
    """
    from prunectl.core.training.evaluate import EvalOptions

    needing = data_gates(limits)
    if not needing:
        return None
    flag = f"--{needing[0]} {dict(limits)[needing[0]]}"
    if data is None:
        raise click.UsageError(f"--{needing[0]} is measured on evaluation data; add --data EVAL. "
                               f"Received: {flag} without --data")
    if params.get("finetune_epochs") is None:
        return EvalOptions(data, need_accuracy=True)
    if params.get("val_data") is None and params.get("val_split") is None:
        raise click.UsageError(f"with --finetune-epochs, --{needing[0]} is measured on the validation data; "
                               f"add --val-data or --val-split. Received: {flag} without either")
    return None


def finish_with_gates(report: dict, quiet: bool = False) -> None:
    """Print failed gates, one ``Error:`` line each, and exit 3 if any failed."""
    failed = [g for g in report.get("gates", []) if not g["passed"]]
    if not quiet:
        for gate in report.get("gates", []):
            if gate["passed"]:
                render.stderr_console().print(f"Gate {gate['message']}")
    for gate in failed:
        click.echo(f"Error: gate {gate['message']}", err=True)
    if failed:
        raise click.exceptions.Exit(GATE_EXIT_CODE)
