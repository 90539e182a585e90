"""The evaluation report's plots, each a self-contained inline SVG (html.py lays out the page).

Hand-written: no scripts, no fonts, no plotting library. The plots that read accuracy on a
vertical axis (against cost, against confidence, a cascade's sweep of thresholds) share one
frame: ``_accuracy_axis``, ``_share_y`` and ``_x_axis``.
"""

from __future__ import annotations

import html
import math
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


def _circle(x: float, y: float, r: float, fill: str, extra: str = "", title: str = "") -> str:
    """A marker; ``title`` is the tooltip a browser shows over it (no script needed)."""
    attrs = f"cx='{x:.1f}' cy='{y:.1f}' r='{r:.1f}' fill='{fill}' {extra}".rstrip()
    if not title:
        return f"<circle {attrs}/>"
    return f"<circle {attrs}><title>{html.escape(title)}</title></circle>"


def _polyline(points: list[tuple[float, float]], colour: str) -> str:
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return f"<polyline points='{coords}' style='fill:none;stroke:{colour};stroke-width:2'/>"


def _unit_x(value: float) -> float:
    return LEFT + value * (W - LEFT - RIGHT)


#: the frame of the plots with accuracy (0 to 1) upwards
FRAME_TOP, FRAME_BOTTOM = 20, 250


def _share_y(value: float) -> float:
    return FRAME_BOTTOM - value * (FRAME_BOTTOM - FRAME_TOP)


def _accuracy_axis(title: str = "accuracy") -> list[str]:
    """The vertical axis of a share from 0 to 1: ticks, grid lines and its title."""
    body = [_line(LEFT, FRAME_TOP, LEFT, FRAME_BOTTOM)]
    for tick in (0, 0.25, 0.5, 0.75, 1):
        body += [
            _line(LEFT - 4, _share_y(tick), LEFT, _share_y(tick)),
            _text(LEFT - 8, _share_y(tick) + 4, f"{tick}", "end"),
            _line(LEFT, _share_y(tick), W - RIGHT, _share_y(tick), "stroke:#eee"),
        ]
    middle = (FRAME_TOP + FRAME_BOTTOM) / 2
    rotate = f"transform='rotate(-90 {LEFT - 40} {middle})'"
    body.append(_text(LEFT - 40, middle, title, "middle", rotate))
    return body


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
        body.append(_circle(_unit_x(mean), y, 5, colour))
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
    bottom = FRAME_BOTTOM
    height = bottom + 50 + 18 * ((len(variants) + 3) // 4)
    known = [float(v) for v in xs.values() if v is not None]
    ticks = nice_ticks(max(known) if known else 0.0)
    hi = ticks[-1]
    body = _accuracy_axis()
    for index, (name, figures) in enumerate(variants.items()):
        colour = PALETTE[index % len(PALETTE)]
        # A legend rather than labels beside the points: variants with similar figures overlap.
        lx, ly = LEFT + (index % 4) * 130, bottom + 50 + 18 * (index // 4)
        body += [_circle(lx, ly - 4, 5, colour), _text(lx + 9, ly, name)]
        x_value, mean = xs[name], figures["accuracy"]["mean"]
        if x_value is None or mean is None:
            continue
        low, high = figures["accuracy"]["ci95"]
        # A few pixels apart, so variants at the same cost (same model) do not hide each other.
        x = _unit_x(float(x_value) / hi) + (index - (len(variants) - 1) / 2) * 4
        body.append(_line(x, _share_y(low), x, _share_y(high), f"stroke:{colour};stroke-width:2"))
        body.append(_circle(x, _share_y(mean), 5, colour))
    body += _x_axis(bottom, [(_unit_x(t / hi), _short(t)) for t in ticks], title)
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
                body.append(_circle(px(v), y + jitter, 1.6, colour, "fill-opacity='0.5'"))
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


def reliability_plot(variants: dict[str, dict[str, Any]]) -> str:
    """Per variant with a confidence: each confidence bin's accuracy against its mean
    confidence (marker area: the bin's answers), beside the diagonal of perfect calibration.

    The variants without one (no votes, no step confidence) are not drawn (html.py names them).
    """
    shown = {
        (index, name): figures["calibration"]
        for index, (name, figures) in enumerate(variants.items())
        if (figures.get("calibration") or {}).get("n")
    }
    biggest = max((b["n"] for cal in shown.values() for b in cal["bins"]), default=1)
    bottom = FRAME_BOTTOM
    # two legend entries a row, or one where a name would run into its neighbour
    columns = 2 if all(len(name) <= 24 for _, name in shown) else 1
    height = bottom + 50 + 18 * math.ceil(len(shown) / columns)
    body = _accuracy_axis()
    dashed = "stroke:#999;stroke-dasharray:4 3"
    # its label along the diagonal, low down: few answers are that unsure
    tilt = -math.degrees(math.atan2(FRAME_BOTTOM - FRAME_TOP, W - LEFT - RIGHT))
    x0, y0 = _unit_x(0.05), _share_y(0.05) - 5
    body += [
        _line(_unit_x(0), _share_y(0), _unit_x(1), _share_y(1), dashed),
        _text(
            x0,
            y0,
            "perfect calibration",
            "start",
            f"fill='#777' transform='rotate({tilt:.1f} {x0:.1f} {y0:.1f})'",
        ),
    ]
    for slot, ((index, name), cal) in enumerate(shown.items()):
        colour = PALETTE[index % len(PALETTE)]
        points = [(_unit_x(b["confidence"]), _share_y(b["accuracy"])) for b in cal["bins"]]
        if len(points) > 1:
            body.append(_polyline(points, colour))
        for (x, y), b in zip(points, cal["bins"], strict=True):
            low, high = b["range"]
            tip = (
                f"{name}: confidence {low:.1f}-{high:.1f}, n={b['n']}, "
                f"mean confidence {b['confidence']:.3f}, accuracy {b['accuracy']:.3f}"
            )
            radius = max(2.5, 9 * math.sqrt(b["n"] / biggest))  # area as the bin's count
            body.append(_circle(x, y, radius, colour, "class='bin' fill-opacity='0.7'", tip))
        lx, ly = LEFT + (slot % columns) * 260, bottom + 50 + 18 * (slot // columns)
        ece = "-" if cal["ece"] is None else f"{cal['ece']:.3f}"
        body += [
            _rect(lx, ly - 10, 10, 10, f"fill:{colour}"),
            _text(lx + 14, ly, f"{name} (ECE {ece}, n={cal['n']})"),
        ]
    ticks = [(_unit_x(t / 10), f"{t / 10:.1f}") for t in range(0, 11, 2)]
    title = "mean confidence of the bin (tenths of confidence; marker area: its answers)"
    body += _x_axis(bottom, ticks, title)
    return _svg(height, body, "reliability diagram")


#: a sweep labels every threshold up to this many labels, else a subset of them
MAX_LABELS = 6


def sweep_plot(sweep: dict[str, Any]) -> str:
    """A cascade's accuracy (y) against its cost per request (x) at each threshold of its
    sweep, in threshold order; model calls per request where there is no price. Each label
    gives a threshold and its share escalated; the configured threshold is ringed."""
    points = sweep["points"]
    if not points:
        return _svg(60, [_text(LEFT, 30, "no threshold with a known outcome yet")], "sweep")
    priced = all(p["cost"] is not None for p in points) and any(p["cost"] for p in points)
    xs = [float(p["cost" if priced else "calls"]) for p in points]
    title = (
        "cost per request (from models.<id>.pricing)"
        if priced
        else "model calls per request (no prices in the config)"
    )
    configured = {float(v) for v in (sweep.get("rule") or {}).values()}
    ticks = nice_ticks(max(xs))
    hi = ticks[-1]
    at = [(_unit_x(x / hi), _share_y(p["accuracy"])) for x, p in zip(xs, points, strict=True)]
    colour = PALETTE[0]
    body = _accuracy_axis()
    if len(at) > 1:
        body.append(_polyline(at, colour))
    for (x, y), p in zip(at, points, strict=True):
        cost = f"cost {p['cost']:.3g}" if priced else f"{p['calls']:.2f} calls"
        tip = (
            f"threshold {p['threshold']:g}: accuracy {p['accuracy']:.3f}, "
            f"{p['escalated']:.0%} escalated, {cost} per request (n={p['n']})"
        )
        body.append(_circle(x, y, 4, colour, "class='threshold'", tip))
        if float(p["threshold"]) in configured:
            ring = "class='configured' stroke='#333' stroke-width='2'"
            body.append(_circle(x, y, 9, "none", ring))
    # Thresholds that land on the same point share a label (low thresholds escalate nothing).
    groups: list[list[int]] = []
    for i, (x, y) in enumerate(at):
        if groups and math.dist(at[groups[-1][-1]], (x, y)) < 3:
            groups[-1].append(i)
        else:
            groups.append([i])
    step = math.ceil(len(groups) / MAX_LABELS)
    wanted: list[tuple[int, float, float, str]] = []
    for g, group in enumerate(groups):
        mine = [points[i] for i in group]
        ringed = any(float(p["threshold"]) in configured for p in mine)
        if g % step and g != len(groups) - 1 and not ringed:
            continue
        thresholds = _span([p["threshold"] for p in mine], "{:g}")
        label = f"t={thresholds}: {_span([p['escalated'] for p in mine], '{:.0%}')} escalated"
        rank = 0 if ringed else 1 if g in (0, len(groups) - 1) else 2
        wanted.append((rank, *at[group[0]], label + (" (configured)" if ringed else "")))
    body += _labels([(x, y, label) for _, x, y, label in sorted(wanted, key=lambda w: w[0])])
    body += _x_axis(FRAME_BOTTOM, [(_unit_x(t / hi), _short(t)) for t in ticks], title)
    return _svg(FRAME_BOTTOM + 50, body, "accuracy against cost by threshold")


def _labels(wanted: list[tuple[float, float, str]]) -> list[str]:
    """Labels beside their points, the most wanted first, each where it overlaps no label
    placed before it (by an estimate of its width): above or below, right or left of its
    point, inside the frame; a label with no such place is left out."""
    placed: list[Box] = []
    out: list[str] = []
    for x, y, label in wanted:
        width = 6.5 * len(label)
        for dx, dy in ((8, -8), (8, 16), (-8, -8), (-8, 16)):
            left = x + dx if dx > 0 else x + dx - width
            box = (left, y + dy - 11, left + width, y + dy + 3)
            if box[0] < LEFT or box[2] > W or box[1] < 0 or box[3] > FRAME_BOTTOM:
                continue
            if any(_overlap(box, other) for other in placed):
                continue
            placed.append(box)
            out.append(_text(x + dx, y + dy, label, "start" if dx > 0 else "end"))
            break
    return out


Box = tuple[float, float, float, float]  # left, top, right, bottom


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _span(values: list[float], form: str) -> str:
    """``form`` of the values' range: one value when they are all the same."""
    low, high = form.format(min(values)), form.format(max(values))
    return low if low == high else f"{low}-{high}"


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
