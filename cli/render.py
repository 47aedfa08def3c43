"""Human output on stderr (rich tables, progress) and machine output on stdout (JSON).

All printing goes through these helpers, so stdout carries nothing but what
``--json`` asks for.
"""

from __future__ import annotations

import sys
from typing import Literal

import click


def stderr_console():
    from rich.console import Console

    # Logs (CI, pipes) get a fixed, roomy width instead of rich's 80 columns.
    return Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)


def emit_json(text: str) -> None:
    """Write machine output to stdout."""
    click.echo(text, nl=False)


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _threshold(x) -> str:
    return "-" if x is None else f"{x:.4g}"


_Justify = Literal["left", "right"]


def sparsity_table(report: dict, title: str):
    """A rich table of a report's per-layer rows and totals."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_footer=False)
    with_threshold = report.get("kind") == "prune"
    columns: tuple[tuple[str, _Justify], ...] = (
        ("Layer", "left"),
        ("Class", "left"),
        ("Weight", "left"),
        ("Shape", "left"),
        ("Params", "right"),
        ("Zeros", "right"),
        ("Sparsity", "right"),
    )
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=name in ("Layer", "Params", "Zeros"))
    if with_threshold:
        table.add_column("Threshold", justify="right")
    for row in report["layers"]:
        cells = [
            row["layer"],
            row["class"],
            row["weight"],
            "x".join(map(str, row["shape"])),
            f"{row['count']:,}",
            f"{row['zeros']:,}",
            _pct(row["sparsity"]),
        ]
        if with_threshold:
            cells.append(_threshold(row.get("threshold")) if row.get("pruned") else "not pruned")
        table.add_row(*cells)
    for label, total in (("prunable total", report["totals"]["prunable"]), ("all weights", report["totals"]["all"])):
        cells = [
            f"[bold]{label}[/bold]",
            "",
            "",
            "",
            f"{total['count']:,}",
            f"{total['zeros']:,}",
            _pct(total["sparsity"]),
        ]
        table.add_row(*cells, *([""] if with_threshold else []), end_section=label == "prunable total")
    return table


def comparison_table(rows: list[dict], title: str):
    """A rich before/after table."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    columns: tuple[tuple[str, _Justify], ...] = (
        ("Layer", "left"),
        ("Weight", "left"),
        ("Params", "right"),
        ("Before", "right"),
        ("After", "right"),
        ("Change", "right"),
    )
    for name, justify in columns:
        table.add_column(name, justify=justify)
    for row in rows:
        before, after = row["sparsity_before"], row["sparsity_after"]
        change = "-" if before is None or after is None else f"{100 * (after - before):+.1f} pts"
        # A weight whose shape changed (units removed) says how under its name.
        weight = row["weight"] if not row.get("change") else f"{row['weight']}\n{row['change']}"
        count = f"{row['count']:,}" if row.get("count_before") is None else _change(row["count_before"], row["count"])
        table.add_row(row["layer"], weight, count, _pct(before), _pct(after), change)
    return table


def _change(before, after, fmt="{:,}") -> str:
    if before is None:
        return "-"
    return fmt.format(before) if before == after else f"{fmt.format(before)} -> {fmt.format(after)}"


def plan_table(plan: dict, title: str):
    """A rich table of a structural plan: units, params and multiply-adds before -> after per layer."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    columns: tuple[tuple[str, _Justify], ...] = (
        ("Layer", "left"),
        ("Class", "left"),
        ("Group", "right"),
        ("Units", "right"),
        ("Params", "right"),
        ("FLOPs", "right"),
    )
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=name == "Layer")
    frozen = {g["id"]: g["frozen"] for g in plan["groups"]}
    for row in plan["layers"]:
        group = "-" if row["group"] is None else str(row["group"]) + (" (kept)" if frozen.get(row["group"]) else "")
        table.add_row(
            row["layer"],
            row["class_name"],
            group,
            _change(row["units_before"], row["units_after"]),
            _change(row["params_before"], row["params_after"]),
            _change(row["flops_before"], row["flops_after"]),
        )
    totals = plan["totals"]
    table.add_row(
        "[bold]total[/bold]",
        "",
        "",
        _change(totals["units"]["before"], totals["units"]["after"]),
        _change(totals["params"]["before"], totals["params"]["after"]),
        _change(totals["flops"]["before"], totals["flops"]["after"]),
        end_section=True,
    )
    return table


def structural_summary(console, report: dict) -> None:
    """Print a report's structural plan, its boundaries and its benchmark, where it has them."""
    plan = report.get("structural")
    if plan is not None:
        criterion = plan["criterion"]["name"]
        console.print(plan_table(plan, f"Structural plan for {report['input']['path']} ({criterion})"))
        totals = plan["totals"]
        console.print(
            f"Removed {100 * totals['units']['removed']:.1f}% of the {totals['units']['prunable']:,} prunable units "
            f"(counted per layer) and {100 * totals['params']['removed']:.1f}% of the params"
        )
        flops = totals["flops"]
        if flops["ratio"]:
            console.print(
                f"FLOPs (multiply-adds) {flops['before']:,} -> {flops['after']:,} ({flops['ratio']:.2f}x fewer)"
            )
        for boundary in plan["boundaries"]:
            console.print(f"Boundary (left whole): {boundary['layer']} ({boundary['class']}): {boundary['reason']}")
        for note in plan.get("notes", ()):
            console.print(f"Note: {note_line(note)}")
        if report["kind"] == "plan":
            console.print("Dry run: no model or report written.")
    timing = report.get("benchmark")
    if timing is not None:
        console.print(
            f"Latency at batch {timing['batch_size']} ({timing['statistic']} of {timing['repeats']} "
            f"interleaved rounds): {timing['original_ms']:.2f} ms -> {timing['pruned_ms']:.2f} ms "
            f"({timing['speedup']:.2f}x; an empty call takes {timing['floor_ms']:.2f} ms)"
        )


def note_line(note: dict) -> str:
    """One line of a plan's note on a normalization it prunes through, with the measured change if any."""
    line = f"{note['layer']} ({note['class']}) {note['note']}"
    if note.get("max_abs_change") is None:
        return line + " (not measured: no calibration data)"
    return (
        f"{line}: max |change| {note['max_abs_change']:.3g}, mean {note['mean_abs_change']:.3g} "
        f"(mean |output| {note['mean_abs_output']:.3g}) on the calibration data"
    )


def evaluation_line(evaluation: dict) -> str:
    """One line of a report's ``evaluation`` block: each value, reference -> result."""
    reference, result = evaluation.get("reference"), evaluation["result"]
    parts = []
    for name, value in result["values"].items():
        before = (reference or {}).get("values", {}).get(name)
        parts.append(f"{name} {value:.4f}" if before is None else f"{name} {before:.4f} -> {value:.4f}")
    labels = result["label"] if reference is None else f"{reference['label']} -> {result['label']}"
    return f"Evaluation on {evaluation['data']} ({evaluation['samples']} samples, {labels}): {', '.join(parts)}"
