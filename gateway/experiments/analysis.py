"""Experiment analysis: per-variant figures with 95% intervals, tests between variants, and a
verdict that says plainly when the data is not yet enough.

Booleans: Wilson intervals, and the two-proportion z-test (pooled) for differences with an
unpooled interval. Floats: t intervals, and Welch's t-test with the Welch-Satterthwaite degrees
of freedom. The split is checked for a sample-ratio mismatch with a chi-square test against
the weights (p below 0.001 flags it).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats

from gateway.config.schema import ExperimentSpec, MetricSpec, RouteSpec

Z95 = 1.959963984540054
SRM_P = 0.001
#: the feedback name ``gateway eval`` scores offline events with (see offline_runs)
OFFLINE_METRIC = "correct"


@dataclass(frozen=True)
class Estimate:
    n: int
    mean: float | None
    low: float | None
    high: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "ci95": [self.low, self.high]}


def wilson(successes: int, n: int) -> Estimate:
    if n == 0:
        return Estimate(0, None, None, None)
    p = successes / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return Estimate(n, p, max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: Sequence[float]) -> Estimate:
    n = len(values)
    if n == 0:
        return Estimate(0, None, None, None)
    mean = sum(values) / n
    if n == 1:
        return Estimate(1, mean, None, None)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return Estimate(n, mean, mean - half, mean + half)


def two_proportion(s1: int, n1: int, s2: int, n2: int) -> tuple[float, float, float, float] | None:
    """(difference p2 - p1, interval low, high, two-sided p-value) or None without data."""
    if n1 == 0 or n2 == 0:
        return None
    p1, p2 = s1 / n1, s2 / n2
    diff = p2 - p1
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    pooled = (s1 + s2) / (n1 + n2)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    p_value = 1.0 if se0 == 0 else float(2 * stats.norm.sf(abs(diff) / se0))
    return diff, diff - Z95 * se, diff + Z95 * se, p_value


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float, float] | None:
    """(difference mean(b) - mean(a), interval low, high, two-sided p-value) or None."""
    if len(a) < 2 or len(b) < 2:
        return None
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
    se2 = va / len(a) + vb / len(b)
    diff = mb - ma
    if se2 == 0:
        return diff, diff, diff, 1.0 if diff == 0 else 0.0
    df = se2**2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.975, df)) * math.sqrt(se2)
    p_value = float(stats.ttest_ind(b, a, equal_var=False).pvalue)
    return diff, diff - half, diff + half, p_value


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def sample_ratio(counts: dict[str, int], weights: dict[str, float]) -> dict[str, Any] | None:
    active = {name: w for name, w in weights.items() if w > 0}
    total = sum(counts.get(n, 0) for n in active)
    if len(active) < 2 or total == 0:
        return None
    weight_sum = sum(active.values())
    observed = [counts.get(n, 0) for n in active]
    expected = [total * w / weight_sum for w in active.values()]
    p_value = float(stats.chisquare(observed, expected).pvalue)
    return {
        "observed": dict(zip(active, observed, strict=True)),
        "expected": {n: round(e, 2) for n, e in zip(active, expected, strict=True)},
        "p_value": p_value,
        "mismatch": p_value < SRM_P,
    }


# -- the report ----------------------------------------------------------------------------------


def analyse(
    route: str,
    spec: RouteSpec,
    events: Sequence[dict[str, Any]],
    feedback: Sequence[dict[str, Any]],
    *,
    promoted: str | None = None,
) -> dict[str, Any]:
    """The report of one route's live traffic: shadow and offline events are left out."""
    experiment = spec.experiment or ExperimentSpec()
    live = [
        e
        for e in events
        if e.get("route") == route
        and not e.get("shadow")
        and (e.get("source") or "online") == "online"
    ]
    by_variant: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in live:
        by_variant[event["variant"]].append(event)
    values = _metric_values(feedback, experiment.metrics)

    variants: dict[str, dict[str, Any]] = {}
    samples: dict[str, dict[str, list[float]]] = {}
    for name in spec.variants:
        rows = by_variant.get(name, [])
        variants[name], samples[name] = _variant_figures(rows, experiment.metrics, values)

    control = experiment.control or next(iter(spec.variants))
    comparisons = _comparisons(control, spec, experiment, samples)
    first_attempts: dict[str, int] = defaultdict(int)
    for event in live:
        if event.get("assignment") in ("sticky", "random"):
            first_attempts[event["variant"]] += 1
    srm = (
        None
        if promoted
        else sample_ratio(dict(first_attempts), {n: v.weight for n, v in spec.variants.items()})
    )
    return {
        "route": route,
        "control": control,
        "promoted": promoted,
        "weights": {n: v.weight for n, v in spec.variants.items()},
        "min_samples": experiment.min_samples,
        "alpha": experiment.alpha,
        "variants": variants,
        "comparisons": comparisons,
        "sample_ratio": srm,
        "verdict": _verdict(control, experiment, variants, comparisons, srm, promoted),
        "offline": offline_runs(route, events, feedback),
    }


def offline_runs(
    route: str, events: Sequence[dict[str, Any]], feedback: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The route's offline evaluations (``gateway eval``), newest first, per variant.

    Accuracy is the share of scored calls that were correct (``OFFLINE_METRIC`` feedback);
    calls that failed are counted as errors. The run's own report.json is the full result.
    """
    scores = {
        row["inference_id"]: float(row["value"])
        for row in sorted(feedback, key=lambda r: r["ts"])
        if row["name"] == OFFLINE_METRIC and row.get("value") is not None
    }
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        offline = event.get("source") == "offline" and event.get("run_id")
        # Cancelled calls are the ones in flight when a run was interrupted: not results.
        if offline and event.get("route") == route and event.get("status") != "cancelled":
            runs[event["run_id"]].append(event)
    out = []
    for run_id, rows in runs.items():
        by_variant: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_variant[row["variant"]].append(row)
        variants = {}
        for name, calls in by_variant.items():
            ok = [r for r in calls if r["status"] == "ok"]
            scored = [scores[r["id"]] for r in ok if r["id"] in scores]
            latencies = [float(r["latency_ms"]) for r in ok if r.get("latency_ms") is not None]
            variants[name] = {
                "n": len(calls),
                "errors": len(calls) - len(ok),
                "accuracy": wilson(int(sum(scored)), len(scored)).as_dict(),
                "latency_ms": {
                    "p50": percentile(latencies, 0.5),
                    "p95": percentile(latencies, 0.95),
                },
                "prompt_tokens": mean_present(r.get("prompt_tokens") for r in ok),
                "completion_tokens": mean_present(r.get("completion_tokens") for r in ok),
                "calls": mean_present(r.get("calls") for r in ok),
                "cost": mean_present(r.get("cost") for r in ok),
            }
        started = min(float(r["ts"]) for r in rows)
        out.append({"run_id": run_id, "started": started, "variants": variants})
    return sorted(out, key=lambda run: run["started"], reverse=True)


def _metric_values(
    feedback: Sequence[dict[str, Any]], metrics: dict[str, MetricSpec]
) -> dict[str, dict[str, float]]:
    """metric -> inference id -> value; the latest feedback for the same pair wins."""
    values: dict[str, dict[str, float]] = defaultdict(dict)
    for row in sorted(feedback, key=lambda r: r["ts"]):
        if row["name"] in metrics and row.get("value") is not None:
            values[row["name"]][row["inference_id"]] = float(row["value"])
    return values


def _variant_figures(
    rows: list[dict[str, Any]],
    metrics: dict[str, MetricSpec],
    values: dict[str, dict[str, float]],
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    ok = [r for r in rows if r["status"] == "ok"]
    latencies = [float(r["latency_ms"]) for r in ok if r.get("latency_ms") is not None]
    errors = [0.0 if r["status"] == "ok" else 1.0 for r in rows]
    sample: dict[str, list[float]] = {"error_rate": errors, "latency_ms": latencies}
    figures: dict[str, Any] = {
        "n": len(rows),
        "errors": int(sum(errors)),
        "error_rate": wilson(int(sum(errors)), len(rows)).as_dict(),
        "latency_ms": {"p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95)},
        "prompt_tokens": mean_present(r.get("prompt_tokens") for r in ok),
        "completion_tokens": mean_present(r.get("completion_tokens") for r in ok),
        "cost": mean_present(r.get("cost") for r in ok),
        "metrics": {},
    }
    for name, metric in metrics.items():
        observed = [values[name][r["id"]] for r in rows if r["id"] in values.get(name, {})]
        sample[name] = observed
        if metric.type == "boolean":
            figures["metrics"][name] = wilson(int(sum(observed)), len(observed)).as_dict()
        else:
            figures["metrics"][name] = mean_interval(observed).as_dict()
    return figures, sample


def mean_present(values: Any) -> float | None:
    """The mean of the values that are not None; None when there are none."""
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _comparisons(
    control: str,
    spec: RouteSpec,
    experiment: ExperimentSpec,
    samples: dict[str, dict[str, list[float]]],
) -> list[dict[str, Any]]:
    kinds: dict[str, tuple[str, bool]] = {
        name: (m.type, m.higher_is_better) for name, m in experiment.metrics.items()
    }
    kinds["error_rate"] = ("boolean", False)
    kinds["latency_ms"] = ("float", False)
    out = []
    for name in spec.variants:
        if name == control:
            continue
        for metric, (kind, higher_is_better) in kinds.items():
            a, b = samples[control][metric], samples[name][metric]
            if kind == "boolean":
                result = two_proportion(int(sum(a)), len(a), int(sum(b)), len(b))
                test = "two-proportion z-test"
            else:
                result = welch(a, b)
                test = "Welch's t-test"
            entry: dict[str, Any] = {
                "variant": name,
                "against": control,
                "metric": metric,
                "test": test,
                "n": [len(a), len(b)],
                "higher_is_better": higher_is_better,
                "difference": None,
                "ci95": [None, None],
                "p_value": None,
            }
            if result is not None:
                diff, low, high, p_value = result
                entry.update(difference=diff, ci95=[low, high], p_value=p_value)
            out.append(entry)
    return out


def _verdict(
    control: str,
    experiment: ExperimentSpec,
    variants: dict[str, dict[str, Any]],
    comparisons: list[dict[str, Any]],
    srm: dict[str, Any] | None,
    promoted: str | None,
) -> str:
    if promoted:
        return f"'{promoted}' was promoted: it gets all traffic."
    if srm and srm["mismatch"]:
        return (
            f"Sample ratio mismatch (p = {srm['p_value']:.2g}): the observed split does not match "
            "the weights, so the comparison cannot be trusted until the cause is found."
        )
    primary = next(iter(experiment.metrics), "error_rate")
    short = [
        (name, figures["metrics"][primary]["n"] if primary in figures["metrics"] else figures["n"])
        for name, figures in variants.items()
    ]
    missing = [(n, c) for n, c in short if c < experiment.min_samples]
    if missing:
        needs = ", ".join(f"'{n}' has {c}" for n, c in missing)
        return (
            f"Not enough data yet for '{primary}': {needs} of the {experiment.min_samples} "
            "samples per variant set as the minimum. Keep the experiment running."
        )
    lines = []
    for entry in (c for c in comparisons if c["metric"] == primary):
        if entry["p_value"] is None:
            continue
        low, high = entry["ci95"]
        span = (
            f"{entry['difference']:+.4g} (95% CI {low:+.4g} to {high:+.4g}, "
            f"p = {entry['p_value']:.3g})"
        )
        if entry["p_value"] < experiment.alpha:
            better = (entry["difference"] > 0) == entry["higher_is_better"]
            winner, loser = (entry["variant"], control) if better else (control, entry["variant"])
            lines.append(f"'{winner}' beats '{loser}' on {primary}: {span}.")
        else:
            lines.append(
                f"No significant difference between '{entry['variant']}' and '{control}' on "
                f"{primary}: {span}; the interval includes zero."
            )
    return " ".join(lines) or f"No comparable data for '{primary}' yet."
