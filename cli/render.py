"""Human output on stderr (rich tables, progress) and machine output on stdout (JSON).

All printing goes through these helpers, so stdout carries nothing but what
``--json`` asks for, and human output reaches the pinned terminal stream of
:func:`prunectl.cli.quiet.terminal_stream`, never a ``sys.stderr`` that
TensorFlow may have swapped.

Tables are fitted to the terminal: at a narrow width they shorten headers,
drop the least useful columns and fold long names at ``_`` rather than cut
any value short with ``…``. Off a terminal (CI logs, pipes) they get the width
they need and plain lines are never broken.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import click

from prunectl.cli.quiet import terminal_stream

# Off a terminal nothing is wrapped: a log line stays one line, a table as wide as it needs.
_LOG_WIDTH = 1000
_LIVE: list = []
_STARTED: list[bool] = []  # whether a live display ever ran (and may have hidden the cursor)


def stderr_console():
    """The rich console of human output, writing to the pinned terminal stream."""
    from rich.console import Console

    stream = terminal_stream()
    tty = stream.isatty()
    return Console(file=stream, highlight=False, width=None if tty else _LOG_WIDTH, soft_wrap=not tty)


def echo_error(message: str) -> None:
    """Write one ``Error:`` line (or any plain line) to the terminal stream, after stopping a live display."""
    stop_live()
    click.echo(message, file=terminal_stream())


class LiveProgress:
    """A rich ``Progress`` that starts on its first update and always stops with the cursor shown.

    Starting lazily keeps a bar off the screen while nothing measurable happens
    (TensorFlow's import, opening a file that turns out missing).
    """

    def __init__(self, console, *columns):
        self.console = console
        self._columns = columns
        self._bar = None
        self._task = None

    @property
    def bar(self):
        """The live ``Progress``, started now if it was not yet."""
        if self._bar is None:
            from rich.progress import Progress

            self._bar = Progress(*self._columns, console=self.console, transient=True)
            self._bar.start()
            _LIVE.append(self)
            _STARTED.append(True)
        return self._bar

    def stage(self, description: str, completed: int | None = None, total: int | None = None) -> None:
        """Show ``description`` on the main task (with a count where there is one)."""
        if self._task is None:
            self._task = self.bar.add_task(description, total=total)
        self.bar.update(self._task, description=description, completed=completed or 0, total=total)

    def stop(self) -> None:
        if self._bar is not None:
            bar, self._bar = self._bar, None
            bar.stop()
            if self in _LIVE:
                _LIVE.remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def progress_columns(*extra):
    """The columns of a live display: what is happening, a bar, and ``done/total`` where a total is known."""
    from rich.progress import BarColumn, ProgressColumn, TextColumn
    from rich.text import Text

    class Count(ProgressColumn):
        def render(self, task):
            return Text("" if task.total is None else f"{task.completed:.0f}/{task.total:.0f}")

    return (TextColumn("{task.description}"), BarColumn(), Count(), *extra)


def stop_live() -> None:
    """Stop every live display still running (the cursor shown again); called before any exit."""
    for live in list(_LIVE):
        try:
            live.stop()
        except Exception:  # noqa: BLE001 (leaving anyway: the cursor below is what matters)
            pass
    stream = terminal_stream()
    try:
        if _STARTED and stream.isatty():
            stream.write("\x1b[?25h")
        stream.flush()
    except (OSError, ValueError):
        pass


_Justify = Literal["left", "right"]


@dataclass(frozen=True)
class Column:
    """A table column and how it gives way at narrow widths."""

    header: str
    justify: _Justify = "left"
    short: str | None = None  # the header at narrow widths
    drop: int = 0  # 0: always shown; else dropped at narrow widths, 1 first, then 2, ...
    fold: str = ""  # characters after which a long value may be broken onto the next line


NAME_BREAKS = "_/."


def fold_name(name: str, width: int, breaks: str = NAME_BREAKS) -> str:
    """``name`` broken into lines of at most ``width`` after one of ``breaks`` (never inside a part).

    A part longer than ``width`` stays whole on its own line.
    """
    if len(name) <= width or name.startswith("["):  # rich markup (a bold total) is left alone
        return name
    lines, line = [], ""
    chars = re.escape(breaks)
    for part in re.findall(f"[^{chars}]+[{chars}]?|[{chars}]", name):
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = ""
        line += part
    return "\n".join([*lines, line] if line else lines)


def _layouts() -> Iterator[tuple[bool, int, bool, int | None]]:
    """(short headers, drop columns up to this level, compact box, fold width), from the roomiest to the tightest."""
    yield False, 0, False, None
    yield True, 0, False, None
    yield True, 1, False, None
    yield True, 1, True, None
    folds: tuple[int | None, ...] = (None, 24, 16, 12)
    for fold in folds[1:3]:
        yield True, 1, True, fold
    for level in (2, 3):
        for fold in folds:
            yield True, level, True, fold


def fitted_table(console, title: str, columns: Sequence[Column], rows: Sequence[tuple[list, bool]], **table_args):
    """A rich table that fits ``console``'s width without cutting a value short.

    Rich, short of room, narrows columns below their longest word and cuts that
    word with ``…``. Here the roomiest layout in which no cell needs to wrap is
    taken; failing that, each column is given at least its longest word and the
    rest of the room in proportion to what its cells would like, in the roomiest
    layout where that fits.

    Args:
        console: the console it will be printed on (its width is the limit).
        title: the table's title.
        columns: the columns, in order.
        rows: ``(cells, end_section)`` per row, one cell per column.
        **table_args: passed to ``rich.table.Table`` (caption, ...).

    Returns:
        The roomiest layout that fits; else the tightest.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = None
    # First the roomiest layout in which no cell wraps; failing that, the roomiest in which cells wrap at spaces.
    for wrap, (short, drop, compact, fold) in [(w, layout) for w in (False, True) for layout in _layouts()]:
        keep = [i for i, c in enumerate(columns) if not 0 < c.drop <= drop]
        headers = [(columns[i].short or columns[i].header) if short else columns[i].header for i in keep]
        body = []
        for cells, end_section in rows:
            values = [cells[i] for i in keep]
            if fold is not None:
                values = [
                    fold_name(v, fold, columns[i].fold) if columns[i].fold and isinstance(v, str) else v
                    for i, v in zip(keep, values, strict=True)
                ]
            body.append((values, end_section))
        table = Table(
            title=title,
            title_justify="left",
            box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD,
            # Compact: no edges, and two spaces between columns instead of a rule and two pads.
            padding=(0, 1, 0, 0) if compact else (0, 1),
            pad_edge=not compact,
            show_edge=not compact,
            **table_args,
        )
        for header, i in zip(headers, keep, strict=True):
            table.add_column(header, justify=columns[i].justify)
        for values, end_section in body:
            table.add_row(*values, end_section=end_section)
        widths = _column_widths(table, headers, [values for values, _ in body], console.width, wrap)
        if widths is None:
            continue
        for column, width in zip(table.columns, widths, strict=True):
            column.width = width
        probe = Console(file=io.StringIO(), width=console.width, color_system=None, highlight=False)
        probe.print(table)
        if "…" not in probe.file.getvalue():  # type: ignore[attr-defined]
            return table
    return table


def _column_widths(table, headers: list[str], body: list[list], width: int, wrap: bool) -> list[int | None] | None:
    """Widths that give every column its longest word and share out the rest; None where even that is too wide.

    Without ``wrap``, only the widths the cells want (all None) or None.
    """
    from rich.cells import cell_len
    from rich.text import Text

    columns = list(zip(headers, *body, strict=True)) if body else [(h,) for h in headers]
    natural, minimum = [], []
    for texts in columns:
        plain = [Text.from_markup(t).plain if isinstance(t, str) else str(t) for t in texts]
        natural.append(max(cell_len(line) for t in plain for line in (t.splitlines() or [""])))
        minimum.append(max(cell_len(word) for t in plain for word in (t.split() or [""])))
    # The table's borders and the cells' padding (rich's own accounting).
    chrome = table._extra_width + sum(table._get_padding_width(i) for i in range(len(headers)))
    room = width - chrome
    if sum(natural) <= room:
        return [None] * len(headers)
    if not wrap or sum(minimum) > room:
        return None
    spare, wanted = room - sum(minimum), [n - m for n, m in zip(natural, minimum, strict=True)]
    shares = [spare * w // max(1, sum(wanted)) for w in wanted]
    return [m + s for m, s in zip(minimum, shares, strict=True)]


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


_LAYER = Column("Layer", fold=NAME_BREAKS)


def sparsity_table(report: dict, title: str, console=None):
    """A rich table of a report's per-layer rows and totals, fitted to ``console``'s width."""
    console = console or stderr_console()
    with_threshold = report.get("kind") == "prune"
    columns = [
        _LAYER,
        Column("Class", drop=1),
        Column("Weight", fold=NAME_BREAKS),
        Column("Shape", fold="x", drop=3),
        Column("Params", "right"),
        Column("Zeros", "right", drop=2),
        Column("Sparsity", "right", short="Sparse"),
    ]
    if with_threshold:
        columns.append(Column("Threshold", "right", short="Thresh"))
    rows: list[tuple[list, bool]] = []
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
        rows.append((cells, False))
    for label, total in (("prunable total", report["totals"]["prunable"]), ("all weights", report["totals"]["all"])):
        cells = [f"[bold]{label}[/bold]", "", "", "", f"{total['count']:,}", f"{total['zeros']:,}"]
        cells += [_pct(total["sparsity"]), *([""] if with_threshold else [])]
        rows.append((cells, label == "prunable total"))
    return fitted_table(console, title, columns, rows)


def comparison_table(rows: list[dict], title: str, console=None):
    """A rich before/after table, fitted to ``console``'s width."""
    console = console or stderr_console()
    columns = [
        _LAYER,
        Column("Weight", fold=NAME_BREAKS),
        Column("Params", "right"),
        Column("Before", "right"),
        Column("After", "right"),
        Column("Change", "right", drop=1),
    ]
    cells = []
    for row in rows:
        before, after = row["sparsity_before"], row["sparsity_after"]
        change = "-" if before is None or after is None else f"{100 * (after - before):+.1f} pts"
        # A weight whose shape changed (units removed) says how under its name.
        weight = row["weight"] if not row.get("change") else f"{row['weight']}\n{row['change']}"
        count = f"{row['count']:,}" if row.get("count_before") is None else _change(row["count_before"], row["count"])
        cells.append(([row["layer"], weight, count, _pct(before), _pct(after), change], False))
    return fitted_table(console, title, columns, cells)


def _change(before, after, fmt="{:,}") -> str:
    if before is None:
        return "-"
    return fmt.format(before) if before == after else f"{fmt.format(before)} -> {fmt.format(after)}"


def plan_table(plan: dict, title: str, console=None):
    """A rich table of a structural plan: units, params and multiply-adds before -> after per layer."""
    console = console or stderr_console()
    columns = [
        _LAYER,
        Column("Class", drop=1),
        Column("Group", "right"),
        Column("Units", "right"),
        Column("Params", "right"),
        Column("FLOPs", "right"),
    ]
    frozen = {g["id"]: g["frozen"] for g in plan["groups"]}
    rows: list[tuple[list, bool]] = []
    for row in plan["layers"]:
        group = "-" if row["group"] is None else str(row["group"]) + (" (kept)" if frozen.get(row["group"]) else "")
        cells = [row["layer"], row["class_name"], group]
        cells += [_change(row[f"{k}_before"], row[f"{k}_after"]) for k in ("units", "params", "flops")]
        if row.get("inner"):  # units inside the layer (attention heads): named, as the layer has no units of its own
            cells[3] = ", ".join(f"{what} {_change(before, after)}" for what, before, after in row["inner"])
        rows.append((cells, False))
    totals = plan["totals"]
    cells = ["[bold]total[/bold]", "", ""]
    cells += [_change(totals[k]["before"], totals[k]["after"]) for k in ("units", "params", "flops")]
    rows.append((cells, True))
    return fitted_table(console, title, columns, rows)


def plan_summary(console, plan: dict, path: str) -> None:
    """Print a structural plan as it is decided: its table, what it removes, its boundaries and notes."""
    criterion = plan["criterion"]["name"]
    console.print(plan_table(plan, f"Structural plan for {path} ({criterion})", console))
    totals = plan["totals"]
    console.print(
        f"Removed {100 * totals['units']['removed']:.1f}% of the {totals['units']['prunable']:,} prunable units "
        f"(counted per layer) and {100 * totals['params']['removed']:.1f}% of the params"
    )
    flops = totals["flops"]
    if flops["ratio"]:
        console.print(f"FLOPs (multiply-adds) {flops['before']:,} -> {flops['after']:,} ({flops['ratio']:.2f}x fewer)")
    for boundary in plan["boundaries"]:
        console.print(f"Boundary (left whole): {boundary['layer']} ({boundary['class']}): {boundary['reason']}")
    for note in plan.get("notes", ()):
        console.print(f"Note: {note_line(note)}")


def structural_summary(console, report: dict) -> None:
    """Print what follows a report's structural plan: the dry run's last word, and the benchmark.

    The plan itself was shown as it was decided (:func:`plan_summary`, through the job's events).
    """
    if report["kind"] == "plan":
        console.print("Dry run: no model or report written.")
    timing = report.get("benchmark")
    if timing is not None:
        console.print(
            f"Latency at batch {timing['batch_size']} ({timing['statistic']} of {timing['repeats']} "
            f"interleaved rounds): {timing['original_ms']:.2f} ms -> {timing['pruned_ms']:.2f} ms "
            f"({timing['speedup']:.2f}x; an empty call takes {timing['floor_ms']:.2f} ms)"
        )


def fold_line(fold: dict) -> str:
    """One line on what ``--fold-batchnorm`` folded and how far the outputs moved."""
    pairs = fold["folded"]
    if not pairs:
        return "Folded no BatchNormalization (none follows a Dense or convolution without activation)"
    into = ", ".join(f"{bn} -> {producer}" for bn, producer in pairs.items())
    inputs = "the data" if fold["inputs"] == "data" else "random inputs"
    return (
        f"Folded {len(pairs)} BatchNormalization ({into}): outputs moved by at most "
        f"{fold['max_abs_diff']:.2g} on {fold['samples']} rows of {inputs}"
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


def criterion_line(section: dict) -> str:
    """One line of a data-aware criterion's report section: its calibration and the layer output errors it reached."""
    rows = [r for r in section["layers"] if r["output_error"] is not None and r["magnitude_output_error"] is not None]
    line = f"{section['criterion']} on {section['calibration_samples']} calibration samples"
    if not rows:
        return line + " (no layer output error measured)"
    mean = sum(r["output_error"] for r in rows) / len(rows)
    magnitude = sum(r["magnitude_output_error"] for r in rows) / len(rows)
    return (
        f"{line}: layer output error {mean:.3g} (magnitude pruning's: {magnitude:.3g}), "
        f"mean of {len(rows)} layer{'s' if len(rows) > 1 else ''} ||XW - XW'|| / ||XW||"
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


def _figure(kind: str, value: float) -> str:
    if kind == "size":
        return human_size(value)
    if kind == "latency":
        return f"{1000 * value:.3g} ms"
    if kind == "sparsity":
        return f"{100 * value:.1f}%"
    return f"{value:,.0f}"


def search_line(search: dict) -> str:
    """One line: the target, what was reached and at what drop, and whether it was met."""
    target, reached, budget = search["target"], search["reached"], search["budget"]
    kind = target["kind"]
    ratio = f" ({reached['ratio']:.3f}x)" if reached.get("ratio") is not None and kind != "sparsity" else ""
    stages = len([s for s in search["stages"] if s.get("accepted")])
    verdict = "met" if search["met"] else "not met"
    why = f"; stopped: {search['stopped']}" if search.get("stopped") and not search["met"] else ""
    return (
        f"target {target['text']} {verdict}: reached {_figure(kind, reached['value'])}{ratio} in {stages} "
        f"stage{'s' if stages != 1 else ''}, {budget['metric']} drop {reached['drop']:+.4f} "
        f"(budget {budget['limit']:g}){why}"
    )


def steps_table(report: dict, console):
    """Each step of a multi-step run: what it was and the model after it."""
    rows = []
    for step in report["steps"]:
        config = step["config"]
        if step["kind"] == "neurons":
            what = f"ratio {config.get('neuron-ratio')}" if config.get("neuron-ratio") else "threshold"
            if config.get("layers"):
                what = f"{len(config['layers'])} layer ratios"
        elif step["kind"] == "weights":
            what = f"sparsity {config['sparsity']:g}" if config.get("sparsity") is not None else "threshold"
            if config.get("layers"):
                what = f"{len(config['layers'])} layer sparsities"
        else:
            what = f"{step.get('epochs', config.get('finetune-epochs'))} epochs"
        metrics = step.get("metrics") or {}
        shown = next((f"{k} {v:.4f}" for k, v in metrics.items() if "accuracy" in k), None)
        shown = shown or (f"loss {metrics['loss']:.4f}" if "loss" in metrics else "")
        rows.append(
            (
                [
                    str(step["step"]),
                    step["kind"],
                    what,
                    f"{step['params']:,}" if step.get("params") is not None else "",
                    f"{step['flops']:,}" if step.get("flops") is not None else "",
                    f"{100 * step['sparsity']:.1f}%" if step.get("sparsity") is not None else "",
                    shown,
                ],
                False,
            )
        )
    columns = [
        Column("Step", "right"),
        Column("Kind"),
        Column("What", drop=2),
        Column("Params", "right"),
        Column("FLOPs", "right", drop=1),
        Column("Sparsity", "right"),
        Column("Metric", "right"),
    ]
    return fitted_table(console, "Steps, in order (the model after each)", columns, rows)
