"""A report as Markdown, for CI job summaries (e.g. ``$GITHUB_STEP_SUMMARY``)."""

from __future__ import annotations


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def report_markdown(report: dict) -> str:
    """Render a report's files, totals, layers and gates as GitHub-flavoured Markdown."""
    lines = []
    if report.get("kind") == "prune":
        src, out = report["input"], report["output"]
        lines += [
            f"## prunectl: `{_escape(src['path'])}` → `{_escape(out['path'])}`",
            "",
            f"Size on disk: {src['size_bytes']:,} → {out['size_bytes']:,} bytes "
            f"({report['size_ratio']:.3f}x), engine `{report['engine']}`.",
            "",
        ]
    else:
        model = report.get("model", {})
        lines += [f"## prunectl report: `{_escape(model.get('path', ''))}`", ""]
    compared = report.get("baseline") or {}
    for label, key in (("Params", "params"), ("FLOPs", "flops")):
        counts = compared.get(key)
        if counts and counts["before"] != counts["after"]:
            source = _escape(compared["source"])
            lines += [f"{label} against `{source}`: {counts['before']:,} → {counts['after']:,}.", ""]
    totals = report["totals"]
    lines += ["| | params | zeros | sparsity |", "|---|---:|---:|---:|"]
    for label, key in (("prunable weights", "prunable"), ("all weights", "all")):
        t = totals[key]
        lines.append(f"| {label} | {t['count']:,} | {t['zeros']:,} | {_pct(t['sparsity'])} |")
    gates = report.get("gates") or []
    if gates:
        lines += ["", "| gate | measured | limit | verdict |", "|---|---:|---:|---|"]
        for gate in gates:
            value = "–" if gate["value"] is None else f"{gate['value']:.6g}"
            limit = f"{gate['limit']:.6g}"
            if gate.get("relative"):  # a fraction of the reference value
                value, limit = (
                    ("–" if gate["value"] is None else f"{100 * gate['value']:+.2f}%"),
                    f"{100 * gate['limit']:g}%",
                )
            metric = gate.get("metric")
            name = f"{gate['name']} {_escape(metric)}" if metric and metric not in gate["name"] else gate["name"]
            verdict = "✅ passed" if gate["passed"] else "❌ failed"
            lines.append(f"| {name} | {value} | {limit} | {verdict} |")
    lines += ["", "| layer | class | weight | shape | params | zeros | sparsity |", "|---|---|---|---|---:|---:|---:|"]
    for row in report["layers"]:
        shape = "×".join(map(str, row["shape"]))
        lines.append(
            f"| {_escape(row['layer'])} | {row['class']} | {row['weight']} | {shape} | "
            f"{row['count']:,} | {row['zeros']:,} | {_pct(row['sparsity'])} |"
        )
    return "\n".join(lines) + "\n"
