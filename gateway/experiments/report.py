"""Rendering an experiment analysis (``experiments.analyse``) as a terminal table or HTML.

Intervals shown are the always-valid ones (safe at any look); the decision line says what the
rule decided and whether it is safe to act.
"""

from __future__ import annotations

import html
import time
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text


def num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _interval(estimate: dict[str, Any]) -> str:
    low, high = estimate["ci95"]
    if estimate["mean"] is None:
        return "-"
    span = f" [{num(low)}, {num(high)}]" if low is not None else ""
    return f"{num(estimate['mean'])}{span} (n={estimate['n']})"


def variant_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    builtin = ("error_rate", "latency_ms", "cost", "cost_per_correct")
    metrics = sorted(
        {m for v in report["variants"].values() for m in v["metrics"] if m not in builtin}
    )
    header = [
        "variant",
        "weight",
        "units",
        "requests",
        "by fallback",
        "error rate [95% CI]",
        "latency p50 ms",
        "p95 ms",
        "cost",
        "cost/correct [95% CI]",
        *metrics,
    ]
    rows = []
    for name, figures in report["variants"].items():
        m = figures["metrics"]
        rows.append(
            [
                name,
                num(report["weights"][name]),
                str(figures["units"]),
                str(figures["n"]),
                str(figures["answered_by_fallback"]),
                _interval(m["error_rate"]) if "error_rate" in m else "-",
                num(figures["latency_ms"]["p50"]),
                num(figures["latency_ms"]["p95"]),
                num(figures["cost"]),
                _interval(m["cost_per_correct"]) if "cost_per_correct" in m else "-",
                *(_interval(m[x]) if x in m else "-" for x in metrics),
            ]
        )
    return header, rows


def comparison_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "vs", "metric", "difference [95% CI]", "p", "Holm p", "test"]
    rows = []
    for c in report["comparisons"]:
        low, high = c["ci95"]
        diff = (
            "-" if c["difference"] is None else f"{c['difference']:+.4g} [{num(low)}, {num(high)}]"
        )
        rows.append(
            [
                c["variant"],
                c["against"],
                c["metric"] + (" (primary)" if c.get("primary") else ""),
                diff,
                num(c["p_value"]),
                num(c.get("p_adjusted")),
                c["test"],
            ]
        )
    return header, rows


def guardrail_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "vs", "guardrail", "worse by [95% CI]", "margin", "state"]
    rows = []
    for g in report.get("guardrails", []):
        low, high = g["ci95"]
        worse = "-" if g["worse_by"] is None else f"{g['worse_by']:+.4g} [{num(low)}, {num(high)}]"
        state = "BREACH" if g["breach"] else "non-inferior" if g["non_inferior"] else "open"
        rows.append([g["variant"], g["against"], g["metric"], worse, num(g["margin"]), state])
    return header, rows


def power_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = [
        "variant",
        "vs",
        "units (smaller arm)",
        "detectable now (80%)",
        "one-look",
        "effect",
        "units needed",
        "one-look",
    ]
    rows = [
        [
            p["variant"],
            p["against"],
            str(p["n"]),
            num(p["mde_now"]),
            num(p["mde_now_one_look"]),
            num(p["effect"]),
            num(p["n_needed"]),
            num(p["n_needed_one_look"]),
        ]
        for p in report.get("power", [])
    ]
    return header, rows


def decision_lines(report: dict[str, Any]) -> list[str]:
    """The decision, the traffic left out of it, and the actions taken, as plain lines."""
    d = report["decision"]
    lines = [
        f"Decision: {d['status']}"
        + (f", winner '{d['winner']}'" if d["winner"] else "")
        + f" on {d['metric']} ({d['method']}); safe to act: {'yes' if d['safe_to_act'] else 'no'}",
        f"Unit of analysis: {report['unit']}; failed requests count as "
        f"{report['failed_requests']['counted_as']}.",
    ]
    if report.get("apart"):
        parts = [f"{kind} {counts}" for kind, counts in report["apart"].items()]
        lines.append("Reported apart, never compared: " + "; ".join(parts))
    for action in d.get("actions", []):
        undone = " (undone)" if action.get("undone") else ""
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(action["ts"])))
        lines.append(
            f"Action {when}: {action['action']} '{action['variant']}' by {action['actor']}: "
            f"{action['reason']}{undone}"
        )
    return lines


def offline_rows(report: dict[str, Any]) -> tuple[str, list[str], list[list[str]]] | None:
    """The latest offline evaluation (``gateway eval``) beside the live figures, per variant."""
    runs = report.get("offline") or []
    if not runs:
        return None
    latest = runs[0]
    builtin = ("error_rate", "latency_ms", "cost", "cost_per_correct")
    metrics = sorted(
        {m for v in report["variants"].values() for m in v["metrics"] if m not in builtin}
    )
    online = "correct" if "correct" in metrics else next(iter(metrics), None)
    header = [
        "variant",
        "online n",
        f"online {online or 'metric'} [95% CI]",
        "online p50 ms",
        "online cost",
        "offline n",
        "offline accuracy [95% CI]",
        "offline p50 ms",
        "offline cost",
    ]
    rows = []
    for name in dict.fromkeys([*report["variants"], *latest["variants"]]):
        live = report["variants"].get(name)
        off = latest["variants"].get(name)
        rows.append(
            [
                name,
                str(live["n"]) if live else "-",
                _interval(live["metrics"][online]) if live and online else "-",
                num(live["latency_ms"]["p50"]) if live else "-",
                num(live["cost"]) if live else "-",
                str(off["n"]) if off else "-",
                _interval(off["accuracy"]) if off else "-",
                num(off["latency_ms"]["p50"]) if off else "-",
                num(off["cost"]) if off else "-",
            ]
        )
    earlier = f"; earlier runs: {', '.join(r['run_id'] for r in runs[1:])}" if runs[1:] else ""
    return f"Offline run {latest['run_id']} and online traffic{earlier}", header, rows


def print_table(report: dict[str, Any], console: Console) -> None:
    side_by_side = offline_rows(report)
    extra = [(side_by_side[0], (side_by_side[1], side_by_side[2]))] if side_by_side else []
    for title, (header, rows) in (
        (f"Route {report['route']}", variant_rows(report)),
        (f"Comparisons (control '{report['control']}')", comparison_rows(report)),
        ("Guardrails", guardrail_rows(report)),
        ("Power", power_rows(report)),
        *extra,
    ):
        if not rows:
            continue
        console.print(_fitted(console, title, header, rows))
    srm = report["sample_ratio"]
    if srm:
        console.print(
            f"Sample ratio: observed {srm['observed']}, expected {srm['expected']}, "
            f"always-valid p = {num(srm['p_value'])}{' MISMATCH' if srm['mismatch'] else ''}"
        )
    for line in decision_lines(report):
        console.print(line, highlight=False)
    console.print(f"[bold]Verdict:[/bold] {report['verdict']}")


def _fitted(console: Console, title: str, header: list[str], rows: list[list[str]]) -> Table:
    """The rows as a table when it fits the terminal; else one block per row, a line per
    column (``label  value``), so nothing is cut at 80 columns (rich would shrink every column
    to a few letters)."""
    table = Table(title=title)
    for column in header:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    # Measured as if the terminal were unbounded: rich caps a measurement at its width.
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    if natural <= console.width:
        return table
    vertical = Table(title=title, show_header=False, show_lines=False, expand=True)
    vertical.add_column("field", style="dim", ratio=2, overflow="fold")
    vertical.add_column("value", ratio=3, overflow="fold")
    for i, row in enumerate(rows):
        if i:
            vertical.add_section()
        vertical.add_row(Text(header[0], style="bold"), Text(row[0], style="bold"))
        for column, value in zip(header[1:], row[1:], strict=True):
            vertical.add_row(column, value)
    return vertical


def to_html(reports: list[dict[str, Any]]) -> str:
    """A self-contained page: no scripts, no external resources."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Switchboard report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#eee}td:first-child{text-align:left}.verdict{font-weight:bold}"
        "</style></head><body><h1>Switchboard experiments</h1>",
    ]
    for report in reports:
        parts.append(f"<h2>Route {html.escape(report['route'])}</h2>")
        side_by_side = offline_rows(report)
        extra = [side_by_side] if side_by_side else []
        for caption, header, rows in (
            ("", *variant_rows(report)),
            ("Comparisons", *comparison_rows(report)),
            ("Guardrails", *guardrail_rows(report)),
            ("Power", *power_rows(report)),
            *extra,
        ):
            if not rows:
                continue
            parts.append(
                f"<table><caption>{html.escape(caption)}</caption><tr>"
                + "".join(f"<th>{html.escape(h)}</th>" for h in header)
                + "</tr>"
            )
            for row in rows:
                parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
            parts.append("</table>")
        for line in decision_lines(report):
            parts.append(f"<p>{html.escape(line)}</p>")
        parts.append(f"<p class='verdict'>{html.escape(report['verdict'])}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
