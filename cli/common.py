"""Options shared by several commands: quality gates and Markdown output."""

from __future__ import annotations

from pathlib import Path

import click

from prunectl.cli import render
from prunectl.cli.help import section
from prunectl.core.run.gates import GATES, gate_pairs

GATES_SECTION = "Quality gates"

UNSAFE_OPTION = click.option(
    "--unsafe", is_flag=True, help="Allow loading Lambda-layer code stored in the model (trusted files only)."
)


def gate_options(command):
    """Add one ``--<gate>`` option per registered gate (help text from the gate's docstring), in one help section."""
    options = []
    for name in GATES.names():
        gate = GATES.get(name)
        summary = gate.__doc__.strip().splitlines()[0].rstrip(".")
        options.append(
            click.option(
                f"--{name}",
                type=gate.value_type,
                default=None,
                multiple=gate.repeatable,
                metavar=gate.metavar,
                help=f"Gate: {summary[0].lower()}{summary[1:]} (else exit 3).",
            )
        )
    return section(GATES_SECTION, *options)(command)


def markdown_option(command):
    """Add ``--markdown``, in the Output help section."""
    return section(
        "Output",
        click.option(
            "--markdown",
            type=click.Path(path_type=Path),
            default=None,
            help="Also write the report as a Markdown table here (for CI job summaries).",
        ),
    )(command)


def gate_limits(params: dict) -> tuple[tuple[str, float], ...]:
    """The ``(gate, limit)`` pairs given on the command line, in registry order (taken out of ``params``)."""
    return gate_pairs({field: params.pop(field, None) for field in (n.replace("-", "_") for n in GATES.names())})


def finish_with_gates(report, quiet: bool = False) -> None:
    """Print the gates' verdicts (failed ones as one ``Error:`` line each) and exit with ``report.return_code``."""
    if not quiet:
        for gate in report.gates:
            if gate.passed:
                render.stderr_console().print(f"Gate {gate.message}")
    for gate in report.gates:
        if not gate.passed:
            render.echo_error(f"Error: gate {gate.message}")
    search = getattr(report, "search", None)
    if search and not search["met"]:
        render.echo_error(f"Error: {render.search_line(search)}")
    if report.return_code:
        raise click.exceptions.Exit(report.return_code)
