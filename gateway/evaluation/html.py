"""The evaluation report as one self-contained HTML page with inline SVG plots (plots.py).

No scripts, no fonts, no stylesheets from elsewhere: the page opens offline and can be mailed
as a single file. Plots: accuracy with 95% intervals (and chance), accuracy against cost per
request, latency distributions, the answer distribution (position bias), the calibration of
each variant with a confidence (a reliability diagram, its ECE in the legend), and for each
cascade its accuracy against cost per request at each threshold of its sweep.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from gateway.evaluation.plots import (
    accuracy_plot,
    answer_plot,
    cost_plot,
    latency_plot,
    reliability_plot,
    sweep_plot,
)

Table = tuple[str, list[str], list[list[str]]]


def to_html(
    summary: dict[str, Any],
    records: dict[str, dict[str, dict[str, Any]]],
    tables: Sequence[Table] = (),
) -> str:
    esc = html.escape
    state = "complete" if summary["complete"] else "partial: rerun the same command to continue"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Evaluation {esc(summary['route'])}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:right}th{background:#eee}td:first-child{text-align:left}"
        "svg{display:block;margin:0.5em 0 1.5em}svg text{font-size:12px}"
        ".note{color:#555}</style></head><body>",
        f"<h1>Offline evaluation of route {esc(summary['route'])}</h1>",
        f"<p>Run <code>{esc(summary['run_id'])}</code> ({esc(state)}): {summary['items']} items "
        f"from <code>{esc(str(summary['data']['path']))}</code>, scorer "
        f"<code>{esc(str(summary['scorer']))}</code>, gateway {esc(str(summary['gateway']))}.</p>",
        "<p class='note'>Accuracy intervals: Jeffreys. A failed call counts as a wrong answer. "
        "Differences are paired (same items): Bonett-Price intervals, the mid-p McNemar test, "
        "p-values Holm-adjusted over every pair.</p>",
    ]
    for title, header, rows in tables:
        parts.append(f"<h2>{esc(title)}</h2>{_table(header, rows)}")
    variants = summary["variants"]
    parts += [
        "<h2>Accuracy with 95% intervals</h2>",
        accuracy_plot(variants, summary.get("chance")),
        "<h2>Accuracy against cost per request</h2>",
        cost_plot(variants),
        "<h2>Latency per request</h2>",
        latency_plot(
            {
                name: [
                    float(r["latency_ms"])
                    for r in records.get(name, {}).values()
                    if r.get("status") == "ok" and r.get("latency_ms") is not None
                ]
                for name in variants
            }
        ),
    ]
    if summary.get("gold"):
        parts += [
            "<h2>Answer distribution (position bias)</h2>",
            answer_plot(variants, summary["gold"]),
        ]
    parts += ["<h2>Calibration (reliability diagram)</h2>", *_calibration(variants)]
    for name, sweep in (summary.get("cascades") or {}).items():
        parts += [
            f"<h2>Cascade {esc(name)}: accuracy against cost by threshold</h2>",
            sweep_plot(sweep),
            _sweep_note(sweep),
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _calibration(variants: dict[str, dict[str, Any]]) -> list[str]:
    """The reliability diagram, and a note naming the variants it leaves out."""
    without = [n for n, f in variants.items() if not (f.get("calibration") or {}).get("n")]
    if len(without) == len(variants):
        return ["<p class='note'>No variant has a confidence (no votes, no cascade step "
                "confidences): nothing to plot.</p>"]  # fmt: skip
    parts = [reliability_plot(variants)]
    if without:
        names = ", ".join(html.escape(n) for n in without)
        parts.append(f"<p class='note'>No confidence (no votes), not plotted: {names}.</p>")
    return parts


def _sweep_note(sweep: dict[str, Any]) -> str:
    esc = html.escape
    rule = ", ".join(f"{esc(k)} {v:g}" for k, v in (sweep.get("rule") or {}).items()) or "none"
    last = sweep.get("last")
    to = "a last step no item reached" if last is None else f"<code>{esc(str(last))}</code>"
    note = (
        f"Replayed from the first step <code>{esc(str(sweep['first']))}</code>, escalating to "
        f"{to}; configured threshold (ringed): {rule}."
    )
    unknown = max((p["unknown"] for p in sweep["points"]), default=0)
    if unknown:
        note += (
            f" Up to {unknown} items are left out at a threshold: the last step never ran on "
            "them (evaluate its variant too)."
        )
    return f"<p class='note'>{note}</p>"
