"""Human output on stderr (rich tables, progress) and machine output on stdout (JSON).

All printing goes through these helpers, so stdout carries nothing but what
``--json`` asks for.
"""

from __future__ import annotations

import sys

import click


def stderr_console():
    from rich.console import Console

    # Logs (CI, pipes) get a fixed, roomy width instead of rich's 80 columns.
    return Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)


def emit_json(text: str) -> None:
    """Write machine output to stdout."""
    click.echo(text, nl=False)


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _threshold(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def sparsity_table(report: dict, title: str):
    """A rich table of a report's per-layer rows and totals."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_footer=False)
    with_threshold = report.get("kind") == "prune"
    for name, justify in (("Layer", "left"), ("Class", "left"), ("Weight", "left"), ("Shape", "left"),
                          ("Params", "right"), ("Zeros", "right"), ("Sparsity", "right")):
        table.add_column(name, justify=justify, no_wrap=name in ("Layer", "Params", "Zeros"))
    if with_threshold:
        table.add_column("Threshold", justify="right")
    for row in report["layers"]:
        cells = [row["layer"], row["class"], row["weight"], "x".join(map(str, row["shape"])),
                 f"{row['count']:,}", f"{row['zeros']:,}", _pct(row["sparsity"])]
        if with_threshold:
            cells.append(_threshold(row.get("threshold")) if row.get("pruned") else "not pruned")
        table.add_row(*cells)
    for label, total in (("prunable total", report["totals"]["prunable"]),
                         ("all weights", report["totals"]["all"])):
        cells = [f"[bold]{label}[/bold]", "", "", "", f"{total['count']:,}", f"{total['zeros']:,}",
                 _pct(total["sparsity"])]
        table.add_row(*cells, *([""] if with_threshold else []), end_section=label == "prunable total")
    return table


def comparison_table(rows: list[dict], title: str):
    """A rich before/after table."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name, justify in (("Layer", "left"), ("Weight", "left"), ("Params", "right"),
                          ("Before", "right"), ("After", "right"), ("Change", "right")):
        table.add_column(name, justify=justify)
    for row in rows:
        before, after = row["sparsity_before"], row["sparsity_after"]
        change = "-" if before is None else f"{100 * (after - before):+.1f} pts"
        table.add_row(row["layer"], row["weight"], f"{row['count']:,}", _pct(before), _pct(after), change)
    return table


def is_terminal() -> bool:
    return sys.stderr.isatty()
