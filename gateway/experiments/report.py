"""Rendering an experiment analysis (``experiments.analyse``) as a terminal table or HTML."""

from __future__ import annotations

import html
from typing import Any

from rich.console import Console
from rich.table import Table


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
    metrics = sorted({m for v in report["variants"].values() for m in v["metrics"]})
    header = [
        "variant",
        "weight",
        "n",
        "error rate [95% CI]",
        "latency p50 ms",
        "p95 ms",
        "prompt tok",
        "completion tok",
        "cost",
        *metrics,
    ]
    rows = []
    for name, figures in report["variants"].items():
        rows.append(
            [
                name,
                num(report["weights"][name]),
                str(figures["n"]),
                _interval(figures["error_rate"]),
                num(figures["latency_ms"]["p50"]),
                num(figures["latency_ms"]["p95"]),
                num(figures["prompt_tokens"]),
                num(figures["completion_tokens"]),
                num(figures["cost"]),
                *(_interval(figures["metrics"][m]) for m in metrics),
            ]
        )
    return header, rows


def comparison_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "vs", "metric", "difference [95% CI]", "p-value", "test"]
    rows = []
    for c in report["comparisons"]:
        low, high = c["ci95"]
        diff = (
            "-" if c["difference"] is None else f"{c['difference']:+.4g} [{num(low)}, {num(high)}]"
        )
        rows.append([c["variant"], c["against"], c["metric"], diff, num(c["p_value"]), c["test"]])
    return header, rows


def offline_rows(report: dict[str, Any]) -> tuple[str, list[str], list[list[str]]] | None:
    """The latest offline evaluation (``gateway eval``) beside the live figures, per variant."""
    runs = report.get("offline") or []
    if not runs:
        return None
    latest = runs[0]
    metrics = sorted({m for v in report["variants"].values() for m in v["metrics"]})
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
        (f"Against the control '{report['control']}'", comparison_rows(report)),
        *extra,
    ):
        table = Table(title=title)
        for column in header:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    srm = report["sample_ratio"]
    if srm:
        console.print(
            f"Sample ratio: observed {srm['observed']}, expected {srm['expected']}, "
            f"p = {num(srm['p_value'])}{' MISMATCH' if srm['mismatch'] else ''}"
        )
    console.print(f"[bold]Verdict:[/bold] {report['verdict']}")


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
            ("", *comparison_rows(report)),
            *extra,
        ):
            parts.append(
                f"<table><caption>{html.escape(caption)}</caption><tr>"
                + "".join(f"<th>{html.escape(h)}</th>" for h in header)
                + "</tr>"
            )
            for row in rows:
                parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
            parts.append("</table>")
        parts.append(f"<p class='verdict'>{html.escape(report['verdict'])}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
