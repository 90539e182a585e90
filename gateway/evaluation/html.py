"""The evaluation report as one self-contained HTML page with inline SVG plots.

No scripts, no fonts, no stylesheets from elsewhere: the page opens offline and can be mailed
as a single file. Plots: accuracy with 95% intervals (and chance), accuracy against cost per
request, latency distributions, and the answer distribution (position bias).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from gateway.experiments.analysis import percentile

W, ROW, LEFT, RIGHT, TOP = 720, 34, 170, 30, 30
PALETTE = (
    "#4269d0",
    "#efb118",
    "#ff725c",
    "#6cc5b0",
    "#3ca951",
    "#ff8ab7",
    "#a463f2",
    "#97bbf5",
    "#9c6b4e",
    "#9498a0",
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
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


# -- plots --------------------------------------------------------------------------------------


def _svg(height: int, body: list[str], label: str) -> str:
    return (
        f"<svg width='{W}' height='{height}' viewBox='0 0 {W} {height}' role='img' "
        f"aria-label='{html.escape(label)}'>" + "".join(body) + "</svg>"
    )


def _text(x: float, y: float, text: str, anchor: str = "start", extra: str = "") -> str:
    return (
        f"<text x='{x:.1f}' y='{y:.1f}' text-anchor='{anchor}' {extra}>{html.escape(text)}</text>"
    )


def _line(x1: float, y1: float, x2: float, y2: float, style: str = "stroke:#333") -> str:
    return f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' style='{style}'/>"


def _rect(x: float, y: float, width: float, height: float, style: str) -> str:
    return (
        f"<rect x='{x:.1f}' y='{y:.1f}' width='{width:.1f}' height='{height:.1f}' style='{style}'/>"
    )


def _x_axis(y: float, ticks: list[tuple[float, str]], title: str) -> list[str]:
    out = [_line(LEFT, y, W - RIGHT, y)]
    for x, label in ticks:
        out += [_line(x, y, x, y + 4), _text(x, y + 16, label, "middle")]
    out.append(_text((LEFT + W - RIGHT) / 2, y + 32, title, "middle"))
    return out


def _unit_x(value: float) -> float:
    return LEFT + value * (W - LEFT - RIGHT)


def accuracy_plot(variants: dict[str, dict[str, Any]], chance: float | None) -> str:
    height = TOP + ROW * len(variants) + 45
    body: list[str] = []
    bottom = TOP + ROW * len(variants)
    for tick in (0.25, 0.5, 0.75):
        body.append(_line(_unit_x(tick), TOP - 10, _unit_x(tick), bottom, "stroke:#eee"))
    if chance is not None:
        x = _unit_x(chance)
        body += [
            _line(x, TOP - 10, x, bottom, "stroke:#999;stroke-dasharray:4 3"),
            _text(x + 4, TOP - 14, f"chance {chance:.2f}"),
        ]
    for index, (name, figures) in enumerate(variants.items()):
        y = TOP + ROW * index + ROW / 2
        colour = PALETTE[index % len(PALETTE)]
        body.append(_text(LEFT - 8, y + 4, name, "end"))
        mean, (low, high) = figures["accuracy"]["mean"], figures["accuracy"]["ci95"]
        if mean is None:
            continue
        body.append(_line(_unit_x(low), y, _unit_x(high), y, f"stroke:{colour};stroke-width:3"))
        body.append(f"<circle cx='{_unit_x(mean):.1f}' cy='{y:.1f}' r='5' fill='{colour}'/>")
        body.append(_text(_unit_x(high) + 6, y + 4, f"{mean:.3f} (n={figures['n']})"))
    ticks = [(_unit_x(t), f"{t:.2f}") for t in (0, 0.25, 0.5, 0.75, 1)]
    body += _x_axis(bottom, ticks, "accuracy")
    return _svg(height, body, "accuracy with 95% intervals")


def cost_plot(variants: dict[str, dict[str, Any]]) -> str:
    """Accuracy (y) against cost per request (x); tokens per request where there is no price."""
    costs = {n: f["cost"]["per_request"] for n, f in variants.items()}
    priced = any(c for c in costs.values())
    if priced:
        xs, title = costs, "cost per request (from models.<id>.pricing)"
    else:
        xs = {
            n: (f["prompt_tokens"] or 0) + (f["completion_tokens"] or 0)
            for n, f in variants.items()
        }
        title = "tokens per request (no prices in the config)"
    top, bottom = 20, 250
    height = bottom + 50 + 18 * ((len(variants) + 3) // 4)
    known = [float(v) for v in xs.values() if v is not None]
    ticks = nice_ticks(max(known) if known else 0.0)
    hi = ticks[-1]

    def px(v: float) -> float:
        return LEFT + v / hi * (W - LEFT - RIGHT)

    def py(v: float) -> float:
        return bottom - v * (bottom - top)

    body = [_line(LEFT, top, LEFT, bottom)]
    for tick in (0, 0.25, 0.5, 0.75, 1):
        body += [
            _line(LEFT - 4, py(tick), LEFT, py(tick)),
            _text(LEFT - 8, py(tick) + 4, f"{tick}", "end"),
        ]
        body.append(_line(LEFT, py(tick), W - RIGHT, py(tick), "stroke:#eee"))
    middle = (top + bottom) / 2
    rotate = f"transform='rotate(-90 {LEFT - 40} {middle})'"
    body.append(_text(LEFT - 40, middle, "accuracy", "middle", rotate))
    for index, (name, figures) in enumerate(variants.items()):
        colour = PALETTE[index % len(PALETTE)]
        # A legend rather than labels beside the points: variants with similar figures overlap.
        lx, ly = LEFT + (index % 4) * 130, bottom + 50 + 18 * (index // 4)
        body += [
            f"<circle cx='{lx:.1f}' cy='{ly - 4:.1f}' r='5' fill='{colour}'/>",
            _text(lx + 9, ly, name),
        ]
        x_value, mean = xs[name], figures["accuracy"]["mean"]
        if x_value is None or mean is None:
            continue
        low, high = figures["accuracy"]["ci95"]
        # A few pixels apart, so variants at the same cost (same model) do not hide each other.
        x = px(float(x_value)) + (index - (len(variants) - 1) / 2) * 4
        body.append(_line(x, py(low), x, py(high), f"stroke:{colour};stroke-width:2"))
        body.append(f"<circle cx='{x:.1f}' cy='{py(mean):.1f}' r='5' fill='{colour}'/>")
    body += _x_axis(bottom, [(px(t), _short(t)) for t in ticks], title)
    return _svg(height, body, "accuracy against cost per request")


def latency_plot(latencies: dict[str, list[float]]) -> str:
    """Per variant: a box from p25 to p75, whiskers p5 to p95, the median, every request a dot.

    The axis is logarithmic when latencies span more than 20x (one call versus an ensemble).
    """
    values = [v for vs in latencies.values() for v in vs if v > 0]
    height = TOP + ROW * len(latencies) + 45
    bottom = TOP + ROW * len(latencies)
    if not values:
        return _svg(60, [_text(LEFT, 30, "no successful calls yet")], "latency")
    lo, hi = min(values), max(values)
    log = hi / lo > 20

    def px(v: float) -> float:
        if log:
            share = (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo) or 1)
        else:
            share = v / hi
        return LEFT + share * (W - LEFT - RIGHT)

    body: list[str] = []
    for index, (name, vs) in enumerate(latencies.items()):
        y = TOP + ROW * index + ROW / 2
        colour = PALETTE[index % len(PALETTE)]
        body.append(_text(LEFT - 8, y + 4, name, "end"))
        if not vs:
            continue
        q = {p: percentile(vs, p) or 0.0 for p in (0.05, 0.25, 0.5, 0.75, 0.95)}
        body.append(_line(px(q[0.05]), y, px(q[0.95]), y, f"stroke:{colour}"))
        width = max(1.0, px(q[0.75]) - px(q[0.25]))
        style = f"fill:{colour};fill-opacity:0.25;stroke:{colour}"
        body.append(_rect(px(q[0.25]), y - 8, width, 16, style))
        body.append(_line(px(q[0.5]), y - 8, px(q[0.5]), y + 8, f"stroke:{colour};stroke-width:3"))
        for i, v in enumerate(vs):
            if v > 0:
                jitter = ((i * 7919) % 13 - 6) * 0.9  # deterministic spread, no randomness
                body.append(
                    f"<circle cx='{px(v):.1f}' cy='{y + jitter:.1f}' r='1.6' fill='{colour}' "
                    "fill-opacity='0.5'/>"
                )
    if log:
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        ticks = [m * 10.0**e for e in decades for m in (1, 2, 5)]
        ticks = [t for t in ticks if lo <= t <= hi] or [lo, hi]
    else:
        ticks = [hi * t for t in (0, 0.25, 0.5, 0.75, 1)]
    scale = "log scale" if log else "linear scale"
    body += _x_axis(
        bottom,
        [(px(t), _short(t)) for t in ticks if t > 0 or not log],
        f"latency per request, ms ({scale})",
    )
    return _svg(height, body, "latency distributions")


def answer_plot(variants: dict[str, dict[str, Any]], gold: dict[str, int]) -> str:
    """One stacked bar per variant (and the gold answers): the share of each answer."""
    rows = {"gold answers": gold, **{n: f["answers"] for n, f in variants.items()}}
    keys = sorted({k for counts in rows.values() for k in counts}, key=lambda k: (k == "none", k))
    colours = {
        k: ("#ccc" if k == "none" else PALETTE[i % len(PALETTE)]) for i, k in enumerate(keys)
    }
    height = TOP + ROW * len(rows) + 30
    body: list[str] = []
    for index, (name, counts) in enumerate(rows.items()):
        y = TOP + ROW * index + 6
        total = sum(counts.values()) or 1
        body.append(_text(LEFT - 8, y + 15, name, "end"))
        x = float(LEFT)
        for key in keys:
            width = counts.get(key, 0) / total * (W - LEFT - RIGHT)
            if width <= 0:
                continue
            body.append(_rect(x, y, width, 20, f"fill:{colours[key]}"))
            if width > 40:
                body.append(
                    _text(x + width / 2, y + 15, f"{key} {counts[key] / total:.0%}", "middle")
                )
            x += width
    legend_y = TOP + ROW * len(rows) + 14
    for i, key in enumerate(keys):
        body.append(_rect(LEFT + i * 60, legend_y - 10, 10, 10, f"fill:{colours[key]}"))
        body.append(_text(LEFT + i * 60 + 14, legend_y, key))
    return _svg(height, body, "answer distribution")


def nice_ticks(high: float, count: int = 4) -> list[float]:
    """0 and round steps (1, 2, 2.5 or 5 times a power of ten) up to at least ``high``."""
    if high <= 0:
        return [0.0, 1.0]
    raw = high / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    return [step * i for i in range(math.ceil(high / step - 1e-9) + 1)]


def _short(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) >= 0.01 else f"{value:.2g}"
