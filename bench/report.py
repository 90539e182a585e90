"""Tables of a gateway benchmark run: rich on the terminal, Markdown for docs/benchmarks.md.

Every comparison prints the absolute figures of each target beside the Switchboard/LiteLLM
ratio. For latencies and memory a ratio below 1 favours Switchboard; for rates and stream
counts a ratio above 1 does.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

# Piped into a file or `tee`, rich would wrap at 80 columns; the tables need more.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)

MB = 1024 * 1024


def progress(message: str) -> None:
    console.print(f"[dim]… {message}[/dim]")


def ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def ratio(sw: float | None, ll: float | None) -> str:
    """Switchboard/LiteLLM; '-' where either is missing or the ratio would mislead (a delta
    at or below zero is noise around nothing)."""
    if sw is None or ll is None or math.isnan(sw) or math.isnan(ll) or ll <= 0 or sw < 0:
        return "-"
    return f"{sw / ll:.2f}x"


def _table(title: str, columns: Sequence[str]) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold")
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    return table


def header(meta: dict[str, Any]) -> None:
    console.rule("[bold]Gateway overhead: Switchboard vs LiteLLM")
    console.print(
        f"{meta['date']}  commit {meta['commit']}{' (gateway/ modified)' * meta['dirty']}"
    )
    console.print(f"{meta['machine']}; Python {meta['python']}; LiteLLM {meta['litellm']}")
    console.print("cores: " + ", ".join(f"{k} {v}" for k, v in meta["layout"].items()))
    console.print(f"command: {meta['command']}")


# -- the phases ---------------------------------------------------------------------------------


def _compare_rows(
    rows: dict[str, dict[str, Any]], metrics: Sequence[tuple[str, str]]
) -> list[list[str]]:
    out = []
    for label, key in metrics:
        values = {t: rows[t].get(key) for t in ("direct", "switchboard", "litellm") if t in rows}
        out.append(
            [
                label,
                *(
                    ms(values.get(t)) if t in values else "-"
                    for t in ("direct", "switchboard", "litellm")
                ),
                ratio(values.get("switchboard"), values.get("litellm")),
            ]
        )
    return out


def sequential(rows: dict[str, dict[str, Any]]) -> None:
    table = _table(
        "Added latency, one request at a time (ms; rounds taking turns)",
        ["", "direct", "switchboard", "litellm", "SW/LL"],
    )
    for row in _compare_rows(rows, _SEQ_METRICS):
        table.add_row(*row)
    console.print(table)


_SEQ_METRICS = [
    ("p50", "p50_ms"),
    ("p99", "p99_ms"),
    ("added p50", "added_p50_ms"),
    ("added p99", "added_p99_ms"),
    ("added mean", "added_mean_ms"),
]


def sweep(
    steps: list[dict[str, Any]], limits: dict[str, dict[str, float]], capacity: dict[str, Any]
) -> None:
    table = _table(
        "Constant-arrival sweep (latency from the due time, ms)",
        ["rate/s", "target", "achieved/s", "errors", "p50", "p99", "added p50", "added p99"],
    )
    for row in steps:
        table.add_row(
            f"{row['rate']:g}",
            row["target"] + (" (again)" if row.get("attempt", 1) > 1 else ""),
            f"{row['achieved']:.0f}",
            str(row["errors"]),
            ms(row["p50_ms"]),
            ms(row["p99_ms"]),
            ms(row.get("added_p50_ms")),
            ms(row.get("added_p99_ms")),
        )
    console.print(table)
    table = _table("Highest rate kept (requests/s)", ["", "switchboard", "litellm", "SW/LL"])
    for key, label in (("under_10ms", "added p99 < 10 ms"), ("under_50ms", "added p99 < 50 ms")):
        sw = limits.get("switchboard", {}).get(key)
        ll = limits.get("litellm", {}).get(key)
        table.add_row(label, *_kept_row(steps, sw, ll))
    console.print(table)
    console.print("[dim]≥: kept at the highest rate tested, so the limit is higher still[/dim]")
    console.print(
        f"upstream double alone at {capacity['rate']:g}/s (3x the highest rate tested): "
        f"{capacity['achieved']:.0f}/s achieved, {capacity['errors']} errors, "
        f"p50 {ms(capacity['p50_ms'])} ms, p99 {ms(capacity['p99_ms'])} ms"
    )


def _kept_row(steps: list[dict[str, Any]], sw: float | None, ll: float | None) -> list[str]:
    """Switchboard's and LiteLLM's highest kept rates and their ratio, marked '≥' where the
    rate is the highest tested: the sweep ran out of rates before the gateway failed."""

    def capped(target: str, value: float | None) -> bool:
        tested = [s["rate"] for s in steps if s["target"] == target]
        return value is not None and bool(tested) and value >= max(tested)

    sw_capped, ll_capped = capped("switchboard", sw), capped("litellm", ll)
    mark = "≥" if sw_capped and not ll_capped else ""
    return [
        ("≥" if sw_capped else "") + _num(sw),
        ("≥" if ll_capped else "") + _num(ll),
        mark + _rate_ratio(sw, ll),
    ]


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _rate_ratio(sw: float | None, ll: float | None) -> str:
    if sw is None or ll is None:
        return "-"
    if ll == 0:
        return "inf" if sw > 0 else "-"
    return f"{sw / ll:.2f}x"


def streaming(rows: dict[str, dict[str, Any]]) -> None:
    table = _table(
        "Streaming, one stream at a time (ms)", ["", "direct", "switchboard", "litellm", "SW/LL"]
    )
    for row in _compare_rows(rows, _STREAM_METRICS):
        table.add_row(*row)
    console.print(table)


_STREAM_METRICS = [
    ("time to first token p50", "ttft_p50_ms"),
    ("time to first token p99", "ttft_p99_ms"),
    ("gap between chunks p99", "gap_p99_ms"),
    ("added TTFT p50", "added_ttft_p50_ms"),
    ("added TTFT p99", "added_ttft_p99_ms"),
    ("added gap p99", "added_gap_p99_ms"),
]


def concurrency(levels: list[dict[str, Any]], most: dict[str, int], stall_s: float) -> None:
    table = _table(
        f"Concurrent streams (50 ms drip; a stall is a gap over {stall_s * 1000:.0f} ms)",
        ["streams", "target", "whole", "errors", "stalls", "max gap ms", "gap p99 ms", "TTFT p99"],
    )
    for row in levels:
        table.add_row(
            str(row["streams"]),
            row["target"] + (" (again)" if row.get("attempt", 1) > 1 else ""),
            str(row["ok"]),
            str(row["errors"]),
            str(row["stalls"]),
            ms(row["max_gap_ms"]),
            ms(row["gap_p99_ms"]),
            ms(row["ttft_p99_ms"]),
        )
    console.print(table)
    sw, ll = most.get("switchboard"), most.get("litellm")
    console.print(
        f"most concurrent streams without a stall: direct {most.get('direct', '-')}, "
        f"switchboard {_num(sw)}, litellm {_num(ll)} (SW/LL {_rate_ratio(sw, ll)})"
    )


def memory(rss: dict[str, dict[str, int]]) -> None:
    table = _table("Resident memory (MB)", ["", "switchboard", "litellm", "SW/LL"])
    for label in ("idle", "peak", "after"):
        sw = rss.get("switchboard", {}).get(label)
        ll = rss.get("litellm", {}).get(label)
        table.add_row(label, _mb(sw), _mb(ll), ratio(sw, ll))
    console.print(table)


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / MB:.1f}"


def pipeline(data: dict[str, Any]) -> None:
    table = _table(
        "Pipeline cost per request, engine excluded (Switchboard only)",
        ["step", "median µs", "p99 µs", "note"],
    )
    for row in data["steps"]:
        table.add_row(row["step"], f"{row['median_us']:.1f}", f"{row['p99_us']:.1f}", row["note"])
    console.print(table)


# -- the headline -------------------------------------------------------------------------------


def headline(results: dict[str, Any]) -> list[list[str]]:
    """[figure, switchboard, litellm, SW/LL, target, met] rows."""
    rows: list[list[str]] = []

    def add(
        label: str,
        sw: float | None,
        ll: float | None,
        fmt: Callable[[float | None], str],
        rat: str,
        goal: str = "",
        met: bool | None = None,
    ) -> None:
        mark = "" if met is None else ("yes" if met else "NO")
        rows.append([label, fmt(sw), fmt(ll), rat, goal, mark])

    seq = results.get("sequential", {})
    sw, ll = seq.get("switchboard", {}), seq.get("litellm", {})
    for key, label in (
        ("added_p50_ms", "added p50, one at a time (ms)"),
        ("added_p99_ms", "added p99, one at a time (ms)"),
    ):
        add(label, sw.get(key), ll.get(key), ms, ratio(sw.get(key), ll.get(key)))

    steps = results.get("sweep", {}).get("steps", [])
    at200 = {s["target"]: s for s in steps if s["rate"] == 200}
    sw200, ll200 = at200.get("switchboard", {}), at200.get("litellm", {})
    for key, label, goal, limit in (
        ("added_p50_ms", "added p50 at 200 req/s (ms)", "<= 1", 1.0),
        ("added_p99_ms", "added p99 at 200 req/s (ms)", "<= 5", 5.0),
    ):
        value = sw200.get(key)
        met = None if value is None else (value <= limit and sw200.get("errors") == 0)
        add(label, value, ll200.get(key), ms, ratio(value, ll200.get(key)), goal, met)

    highest = results.get("sweep", {}).get("highest", {})
    for key, label in (
        ("under_10ms", "highest rate, added p99 < 10 ms"),
        ("under_50ms", "highest rate, added p99 < 50 ms"),
    ):
        sw_r = highest.get("switchboard", {}).get(key)
        ll_r = highest.get("litellm", {}).get(key)
        goal, mark = "", ""
        if key == "under_50ms" and sw_r is not None and ll_r is not None:
            goal, mark = ">= 5x LiteLLM", "yes" if sw_r >= 5 * ll_r and sw_r > 0 else "NO"
        rows.append([label, *_kept_row(steps, sw_r, ll_r), goal, mark])

    streams = results.get("streaming", {})
    sw, ll = streams.get("switchboard", {}), streams.get("litellm", {})
    for key, label, goal in (
        ("added_ttft_p50_ms", "added time to first token p50 (ms)", "<= 1"),
        ("added_ttft_p99_ms", "added time to first token p99 (ms)", ""),
        ("added_gap_p99_ms", "added p99 gap between chunks (ms)", ""),
    ):
        value = sw.get(key)
        met = (value <= 1.0) if goal and value is not None else None
        add(label, value, ll.get(key), ms, ratio(value, ll.get(key)), goal, met)

    most = results.get("concurrency", {}).get("most_streams", {})
    add(
        "concurrent streams without a stall",
        most.get("switchboard"),
        most.get("litellm"),
        _num,
        _rate_ratio(most.get("switchboard"), most.get("litellm")),
    )

    mem = results.get("memory", {})
    sw, ll = mem.get("switchboard", {}), mem.get("litellm", {})
    for label in ("idle", "peak", "after"):
        add(
            f"RSS {label} (MB)",
            sw.get(label),
            ll.get(label),
            _mb,
            ratio(sw.get(label), ll.get(label)),
        )
    if sw.get("idle") and sw.get("after"):
        growth = (sw["after"] - sw["idle"]) / sw["idle"]
        ll_growth = (
            (ll["after"] - ll["idle"]) / ll["idle"] if ll.get("idle") and ll.get("after") else None
        )
        add(
            "RSS after load vs idle",
            growth,
            ll_growth,
            lambda v: "-" if v is None else f"{v * 100:+.1f}%",
            "",
            "flat (< +10%)",
            growth < 0.10,
        )

    for row in results.get("pipeline", {}).get("steps", []):
        rows.append(
            [f"pipeline: {row['step']} (µs, median)", f"{row['median_us']:.1f}", "-", "", "", ""]
        )
    return rows


_HEADLINE_COLUMNS = ["figure", "switchboard", "litellm", "SW/LL", "target", "met"]


def summary(results: dict[str, Any]) -> None:
    table = _table("Summary: Switchboard vs LiteLLM (same run, same upstream)", _HEADLINE_COLUMNS)
    for row in headline(results):
        table.add_row(*row)
    console.print(table)
    console.print(f"[dim]total {results['meta'].get('elapsed_s', 0):.0f} s[/dim]")
    noise = results["meta"].get("background_cpu")
    if noise:
        console.print(_noise_line(results["meta"]))
        if noise["other_processes_pct"] + noise["steal_pct"] > 5:
            console.print(
                "[yellow]warning:[/yellow] other work used the machine during the run; "
                "its figures are noisy (compare the ratios, or run again on a quiet machine)"
            )


def _noise_line(meta: dict[str, Any]) -> str:
    noise = meta.get("background_cpu") or {}
    return (
        f"Load average at start {meta.get('load_average', ['-'])[0]}; during the run other "
        f"processes used {noise.get('other_processes_pct', '-')}% of the machine's CPU, the "
        f"hypervisor stole {noise.get('steal_pct', '-')}%"
    )


# -- Markdown -----------------------------------------------------------------------------------


def _md(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    parts = [
        f"Measured {meta['date']} (commit {meta['commit']}"
        f"{', gateway/ modified' if meta.get('dirty') else ''}), {meta['machine']}; LiteLLM "
        f"{meta['litellm']}. Cores: "
        + ", ".join(f"{k} {v}" for k, v in meta["layout"].items())
        + ".\n",
        f"```\n{meta['command']}\n```\n",
        _noise_line(meta) + ".\n",
        _md(_HEADLINE_COLUMNS, headline(results)),
    ]
    if "sequential" in results:
        parts.append("One request at a time (ms):\n")
        parts.append(
            _md(
                ["", "direct", "switchboard", "litellm", "SW/LL"],
                _compare_rows(results["sequential"], _SEQ_METRICS),
            )
        )
    if "sweep" in results:
        rows = [
            [
                f"{s['rate']:g}",
                s["target"] + (" (again)" if s.get("attempt", 1) > 1 else ""),
                f"{s['achieved']:.0f}",
                str(s["errors"]),
                ms(s["p50_ms"]),
                ms(s["p99_ms"]),
                ms(s.get("added_p50_ms")),
                ms(s.get("added_p99_ms")),
            ]
            for s in results["sweep"]["steps"]
        ]
        parts.append("Constant-arrival sweep (ms, from each request's due time):\n")
        parts.append(
            _md(
                [
                    "rate/s",
                    "target",
                    "achieved/s",
                    "errors",
                    "p50",
                    "p99",
                    "added p50",
                    "added p99",
                ],
                rows,
            )
        )
        cap = results["sweep"]["upstream_capacity"]
        parts.append(
            f"The upstream double alone at {cap['rate']:g}/s (3x the highest rate tested): "
            f"{cap['achieved']:.0f}/s, {cap['errors']} errors, p99 {ms(cap['p99_ms'])} ms.\n"
        )
    if "streaming" in results:
        parts.append("Streaming, one stream at a time (ms):\n")
        parts.append(
            _md(
                ["", "direct", "switchboard", "litellm", "SW/LL"],
                _compare_rows(results["streaming"], _STREAM_METRICS),
            )
        )
    if "concurrency" in results:
        rows = [
            [
                str(r["streams"]),
                r["target"] + (" (again)" if r.get("attempt", 1) > 1 else ""),
                str(r["ok"]),
                str(r["errors"]),
                str(r["stalls"]),
                ms(r["max_gap_ms"]),
                ms(r["gap_p99_ms"]),
            ]
            for r in results["concurrency"]["levels"]
        ]
        parts.append("Concurrent streams (50 ms drip):\n")
        parts.append(
            _md(
                ["streams", "target", "whole", "errors", "stalls", "max gap ms", "gap p99 ms"], rows
            )
        )
    if "pipeline" in results:
        rows = [
            [r["step"], f"{r['median_us']:.1f}", f"{r['p99_us']:.1f}", r["note"]]
            for r in results["pipeline"]["steps"]
        ]
        parts.append("Pipeline cost per request, engine excluded:\n")
        parts.append(_md(["step", "median µs", "p99 µs", "note"], rows))
    return "\n".join(parts)
