"""An evaluation's results: per-variant figures, paired comparisons, JSON, HTML, a table.

Accuracy counts a failed call as a wrong answer (errors are also listed on their own); its 95%
interval is the Jeffreys interval. Comparisons use only the items both variants finished: the
paired difference with the Bonett-Price interval, the mid-p McNemar test, and its p-value
Holm-adjusted over every pair of the run (gateway/stats.py says why each, and
bench/offline_stats.py measures them).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gateway.evaluation.calibration import (
    calibration,
    calibration_rows,
    cascade_sweep,
    sweep_rows,
)
from gateway.evaluation.data import EvalItem
from gateway.evaluation.html import to_html
from gateway.experiments.analysis import mean_present, percentile
from gateway.experiments.report import num
from gateway.stats import holm, jeffreys, mcnemar, paired_difference

Records = dict[str, dict[str, dict[str, Any]]]
#: how the report names its methods (report.json's ``methods``, the HTML page's note)
METHODS = {
    "accuracy": "Jeffreys 95% interval",
    "difference": "Bonett-Price 95% interval (paired)",
    "test": "mid-p McNemar, Holm-adjusted over every pair",
}


def summarise(
    manifest: dict[str, Any],
    items: Sequence[EvalItem],
    records: Records,
) -> dict[str, Any]:
    """The report of a run (complete or not) from its manifest, items and records."""
    variants: list[str] = list(manifest["chosen"])
    ids = [item.id for item in items]
    mc = [item for item in items if item.options is not None]
    figures = {
        name: _variant([records.get(name, {})[i] for i in ids if i in records.get(name, {})])
        for name in variants
    }
    finished = sum(f["n"] for f in figures.values())
    for name in variants:  # confidence you can read: calibration.py
        figures[name]["calibration"] = calibration(list(records.get(name, {}).values()))
    settings = manifest.get("variants") or {}
    sweeps = {
        name: cascade_sweep(records.get(name, {}), records, settings.get(name, {}).get("cascade"))
        for name in variants
    }
    comparisons = [_compare(a, b, ids, records) for a, b in combinations(variants, 2)]
    adjusted = holm([c["mcnemar"]["p_value"] for c in comparisons])
    for comparison, p_adjusted in zip(comparisons, adjusted, strict=True):
        comparison["mcnemar"]["p_adjusted"] = p_adjusted
    return {
        "run_id": manifest["run_id"],
        "route": manifest["route"],
        "gateway": manifest.get("gateway"),
        "data": manifest["data"],
        "scorer": manifest["scorer"],
        "items": len(ids),
        "complete": finished == len(ids) * len(variants),
        "written": time.time(),
        "methods": METHODS,
        "chance": sum(1 / len(i.options or {1: 1}) for i in mc) / len(mc) if mc else None,
        "gold": dict(sorted(Counter(str(i.expected) for i in mc).items())),
        "variants": figures,
        "comparisons": comparisons,
        "cascades": {name: sweep for name, sweep in sweeps.items() if sweep is not None},
    }


def _variant(rows: list[dict[str, Any]]) -> dict[str, Any]:
    outcomes = [1.0 if r.get("correct") else 0.0 for r in rows]
    ok = [r for r in rows if r.get("status") == "ok"]
    correct = int(sum(outcomes))
    latencies = [float(r["latency_ms"]) for r in ok if r.get("latency_ms") is not None]
    costs = [float(r["cost"]) for r in ok if r.get("cost") is not None]
    total_cost = sum(costs) if costs else None
    interval = jeffreys(correct, len(rows))
    answers = Counter(str(r["answer"]) if r.get("answer") is not None else "none" for r in rows)
    top, top_count = answers.most_common(1)[0] if answers else (None, 0)
    return {
        "n": len(rows),
        "errors": len(rows) - len(ok),
        "correct": correct,
        "accuracy": {
            "mean": correct / len(rows) if rows else None,
            "ci95": list(interval) if interval else [None, None],
        },
        "answers": dict(sorted(answers.items())),
        "most_common_answer": {"answer": top, "share": top_count / len(rows) if rows else None},
        "prompt_tokens": mean_present(r.get("prompt_tokens") for r in ok),
        "completion_tokens": mean_present(r.get("completion_tokens") for r in ok),
        "calls": mean_present(r.get("calls") for r in ok),
        "latency_ms": {
            "p50": percentile(latencies, 0.5),
            "p95": percentile(latencies, 0.95),
            "mean": sum(latencies) / len(latencies) if latencies else None,
        },
        "cost": {
            "total": total_cost,
            "per_request": total_cost / len(costs) if total_cost is not None else None,
            "per_correct": total_cost / correct if total_cost is not None and correct else None,
        },
    }


def _compare(a: str, b: str, ids: list[str], records: Records) -> dict[str, Any]:
    ra, rb = records.get(a, {}), records.get(b, {})
    paired = [i for i in ids if i in ra and i in rb]
    xa = [1.0 if ra[i].get("correct") else 0.0 for i in paired]
    xb = [1.0 if rb[i].get("correct") else 0.0 for i in paired]
    table = Counter((x, y) for x, y in zip(xa, xb, strict=True))
    test = mcnemar(int(table[(1.0, 0.0)]), int(table[(0.0, 1.0)]))
    interval = paired_difference(test.a_only, test.b_only, len(paired))
    return {
        "a": a,
        "b": b,
        "n": len(paired),
        "table": {
            "both": table[(1.0, 1.0)],
            "a_only": test.a_only,
            "b_only": test.b_only,
            "neither": table[(0.0, 0.0)],
        },
        "difference": (sum(xb) - sum(xa)) / len(paired) if paired else None,
        "ci95": list(interval) if interval else [None, None],
        "mcnemar": {"statistic": test.statistic, "p_value": test.p_value, "method": test.method},
    }


# -- output -------------------------------------------------------------------------------------


def write_reports(out: Path, summary: dict[str, Any], records: Records) -> tuple[Path, Path]:
    """report.json and report.html, each written atomically."""
    paths = (out / "report.json", out / "report.html")
    tables = [
        ("Accuracy", *accuracy_rows(summary)),
        ("Per request: tokens, model calls, latency, cost", *cost_rows(summary)),
        ("Paired differences", *comparison_rows(summary)),
        (
            "Calibration: reliability by confidence, expected calibration error",
            *calibration_rows(summary),
        ),
        ("Cascades: accuracy against cost by threshold (* configured)", *sweep_rows(summary)),
    ]
    page = to_html(summary, records, tables)
    texts = (json.dumps(summary, indent=2, ensure_ascii=False) + "\n", page)
    for path, text in zip(paths, texts, strict=True):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return paths


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def accuracy_text(figures: dict[str, Any]) -> str:
    mean, (low, high) = figures["accuracy"]["mean"], figures["accuracy"]["ci95"]
    if mean is None:
        return "-"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def answers_text(figures: dict[str, Any]) -> str:
    return " ".join(f"{k}:{v}" for k, v in figures["answers"].items())


def accuracy_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "n", "errors", "accuracy [95% CI]", "answers"]
    rows = [
        [name, str(f["n"]), str(f["errors"]), accuracy_text(f), answers_text(f)]
        for name, f in summary["variants"].items()
    ]
    return header, rows


def cost_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = [
        "variant",
        "prompt tok",
        "compl. tok",
        "calls",
        "p50 ms",
        "p95 ms",
        "cost",
        "per correct",
    ]
    rows = [
        [
            name,
            num(f["prompt_tokens"], 4),
            num(f["completion_tokens"], 4),
            num(f["calls"]),
            _ms(f["latency_ms"]["p50"]),
            _ms(f["latency_ms"]["p95"]),
            num(f["cost"]["per_request"]),
            num(f["cost"]["per_correct"]),
        ]
        for name, f in summary["variants"].items()
    ]
    return header, rows


def comparison_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["b vs a", "pairs", "a only", "b only", "b - a [95% CI]", "McNemar p", "Holm p"]
    rows = []
    for c in summary["comparisons"]:
        low, high = c["ci95"]
        diff = (
            "-" if c["difference"] is None else f"{c['difference']:+.3f} [{low:+.3f}, {high:+.3f}]"
        )
        rows.append(
            [
                f"{c['b']} vs {c['a']}",
                str(c["n"]),
                str(c["table"]["a_only"]),
                str(c["table"]["b_only"]),
                diff,
                num(c["mcnemar"]["p_value"]),
                num(c["mcnemar"].get("p_adjusted")),
            ]
        )
    return header, rows


def print_summary(summary: dict[str, Any], console: Console) -> None:
    state = "complete" if summary["complete"] else "PARTIAL (rerun the command to continue)"
    title = f"{summary['route']}: {summary['items']} items, run {summary['run_id']}, {state}"
    for caption, (header, rows) in (
        (title, accuracy_rows(summary)),
        ("Per request", cost_rows(summary)),
        ("Paired differences", comparison_rows(summary)),
        ("Calibration (ECE: expected calibration error)", calibration_rows(summary)),
        ("Cascades by threshold (* configured)", sweep_rows(summary)),
    ):
        if not rows:
            continue
        table = Table(title=caption)
        for column in header:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    if summary["chance"] is not None:
        console.print(
            f"Chance accuracy: {summary['chance']:.3f}. Gold answers: "
            + " ".join(f"{k}:{v}" for k, v in summary["gold"].items())
        )
