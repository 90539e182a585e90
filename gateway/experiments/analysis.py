"""Experiment analysis: a route's live traffic turned into figures, comparisons and a decision.

What counts (intention to treat, units.py): each request is counted once, for the variant it
was assigned, with its last attempt's outcome and feedback; pinned, promoted and shadow traffic
is reported apart and never compared; a failed request is a failure of every boolean quality
metric (``failed_requests`` in the report says how many). With a sticky key the unit of analysis
is the key, without one the request. The statistics are in sequential.py, units.py,
comparisons.py, power.py, and the rule in decision.py.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.config.routes import ExperimentSpec, RouteSpec
from gateway.experiments.decision import Metric, Setup, evaluate
from gateway.experiments.units import RANDOMISED, Request, Stream, codes, requests

Z95 = 1.959963984540054
#: the feedback name ``gateway eval`` scores offline events with (see offline_runs)
OFFLINE_METRIC = "correct"
#: guardrails every experiment can declare without a feedback metric
BUILT_IN_GUARDRAILS = ("error_rate", "latency_p95", "cost")


@dataclass(frozen=True)
class Estimate:
    n: int
    mean: float | None
    low: float | None
    high: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "ci95": [self.low, self.high]}


def wilson(successes: int, n: int, z: float = Z95) -> Estimate:
    """The Wilson score interval (Wilson, JASA 1927): valid at one look."""
    if n == 0:
        return Estimate(0, None, None, None)
    p = successes / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n * n)) / denom
    return Estimate(n, p, max(0.0, centre - half), min(1.0, centre + half))


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def mean_present(values: Any) -> float | None:
    """The mean of the values that are not None; None when there are none."""
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


# -- the report ----------------------------------------------------------------------------------


def analyse(
    route: str,
    spec: RouteSpec,
    events: Sequence[dict[str, Any]],
    feedback: Sequence[dict[str, Any]],
    *,
    promoted: str | None = None,
    actions: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The report of one route's live traffic, with its machine-readable ``decision``."""
    experiment = spec.experiment or ExperimentSpec()
    weights = {n: v.weight for n, v in spec.variants.items()}
    arms = [n for n, w in weights.items() if w > 0]
    control = experiment.control if experiment.control in arms else arms[0]
    primary = experiment.primary or next(iter(experiment.metrics), "error_rate")
    online = [
        e for e in events if e.get("route") == route and (e.get("source") or "online") == "online"
    ]
    shadow = [e for e in online if e.get("shadow")]
    every = requests([e for e in online if not e.get("shadow")])
    compared = [r for r in every if r.reason in RANDOMISED and r.assigned in arms]
    apart = [r for r in every if not (r.reason in RANDOMISED and r.assigned in arms)]
    values = metric_values(feedback, set(experiment.metrics) | {OFFLINE_METRIC})

    arm_index = {name: i for i, name in enumerate(arms)}
    unit_codes, _ = codes([r.unit for r in compared])
    arm_codes = np.fromiter((arm_index[r.assigned] for r in compared), dtype=np.int64)
    streams = _streams(compared, unit_codes, arm_codes, experiment, values)
    if "latency_p95" in experiment.guardrails:
        streams["latency_p95"] = _slow_share(
            compared,
            unit_codes,
            arm_codes,
            arm_index[control],
            experiment.guardrails["latency_p95"].margin,
        )
    firsts = _first_assignments(compared, unit_codes, arm_codes)
    setup = Setup(
        arms=arms,
        control=arm_index[control],
        weights=[weights[a] for a in arms],
        primary=primary,
        alpha=experiment.alpha,
        burn_in=experiment.min_samples,
        n_star=float(experiment.planned_samples or experiment.expected_samples),
        planned=experiment.planned_samples,
        min_effect=experiment.min_effect,
        # latency_p95's margin is already in its threshold (see _slow_share).
        guardrails={
            n: 0.0 if n == "latency_p95" else g.margin for n, g in experiment.guardrails.items()
        },
    )
    result = evaluate(setup, streams, firsts)
    decision = dict(result.decision)
    decision["promoted"] = promoted
    decision["safe_to_act"] = decision["status"] in ("winner", "no_difference", "guardrail_breach")
    decision["actions"] = list(actions)
    by_assigned: dict[str, list[Request]] = defaultdict(list)
    for r in compared:
        by_assigned[r.assigned].append(r)
    variants = {}
    for name in spec.variants:
        figures = _request_figures(by_assigned.get(name, []))
        figures["weight"] = weights[name]
        figures["units"] = len({r.unit for r in by_assigned.get(name, [])})
        if name in arm_index:
            i = arm_index[name]
            figures["metrics"] = {m: result.figures[m][i] for m in streams}
        else:
            figures["metrics"] = {}
        variants[name] = figures
    return {
        "route": route,
        "control": control,
        "promoted": promoted,
        "weights": weights,
        "unit": "request" if spec.sticky_key == "none" else f"sticky key ({spec.sticky_key})",
        "min_samples": experiment.min_samples,
        "alpha": experiment.alpha,
        "variants": variants,
        "comparisons": result.comparisons,
        "guardrails": result.guardrails,
        "power": result.power,
        "sample_ratio": result.sample_ratio,
        "apart": _apart(apart, shadow),
        "failed_requests": {
            "counted_as": "a failure of every boolean quality metric (intention to treat)",
            "by_variant": {n: v["errors"] for n, v in variants.items()},
        },
        "decision": decision,
        "actions": decision["actions"],
        "verdict": verdict(decision, result.comparisons, experiment),
        "offline": offline_runs(route, events, feedback),
    }


def metric_values(
    feedback: Sequence[dict[str, Any]], names: set[str]
) -> dict[str, dict[str, float]]:
    """metric -> inference id -> value; the latest feedback for the same pair wins."""
    values: dict[str, dict[str, float]] = defaultdict(dict)
    for row in sorted(feedback, key=lambda r: r["ts"]):
        if row["name"] in names and row.get("value") is not None:
            values[row["name"]][row["inference_id"]] = float(row["value"])
    return values


def _value(request: Request, values: dict[str, float]) -> float | None:
    for inference_id in reversed(request.ids):
        if inference_id in values:
            return values[inference_id]
    return None


def _streams(
    compared: list[Request],
    unit_codes: np.ndarray[Any, np.dtype[np.int64]],
    arm_codes: np.ndarray[Any, np.dtype[np.int64]],
    experiment: ExperimentSpec,
    values: dict[str, dict[str, float]],
) -> dict[str, Metric]:
    """Every metric as (unit, arm, y, n) observations in request order."""
    columns: dict[str, tuple[list[int], list[float], list[float]]] = defaultdict(
        lambda: ([], [], [])
    )
    kinds: dict[str, tuple[str, bool]] = {
        name: (m.type, m.higher_is_better) for name, m in experiment.metrics.items()
    }
    kinds.update(error_rate=("boolean", False), latency_ms=("float", False), cost=("float", False))
    correct_metric = next(
        (
            n
            for n in (OFFLINE_METRIC, *experiment.metrics)
            if n in experiment.metrics and experiment.metrics[n].type == "boolean"
        ),
        None,
    )
    if correct_metric is not None:
        kinds["cost_per_correct"] = ("ratio", False)

    def add(name: str, i: int, y: float, n: float = 1.0) -> None:
        rows, ys, ns = columns[name]
        rows.append(i)
        ys.append(y)
        ns.append(n)

    for i, request in enumerate(compared):
        failed = request.status == "error"
        if request.status != "cancelled":
            add("error_rate", i, float(failed))
        if request.status == "ok" and request.latency_ms is not None:
            add("latency_ms", i, request.latency_ms)
        if request.cost is not None:
            add("cost", i, request.cost)
        for name, metric in experiment.metrics.items():
            value = _value(request, values.get(name, {}))
            if value is None and failed and metric.type == "boolean":
                value = 0.0 if metric.higher_is_better else 1.0
            if value is not None:
                add(name, i, value)
        if correct_metric is not None and request.cost is not None:
            correct = _value(request, values.get(correct_metric, {}))
            if correct is None and failed:
                correct = 0.0
            if correct is not None:
                add("cost_per_correct", i, request.cost, correct)
    out = {}
    for name, (rows, ys, ns) in columns.items():
        index = np.asarray(rows, dtype=np.int64)
        stream = Stream(unit_codes[index], arm_codes[index], np.asarray(ys), np.asarray(ns))
        kind, higher = kinds[name]
        out[name] = Metric(name, kind, higher, stream)  # type: ignore[arg-type]
    for name in experiment.metrics:
        if name not in out:
            empty = Stream(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
            kind, higher = kinds[name]
            out[name] = Metric(name, kind, higher, empty)  # type: ignore[arg-type]
    return out


def _slow_share(
    compared: list[Request],
    unit_codes: np.ndarray[Any, np.dtype[np.int64]],
    arm_codes: np.ndarray[Any, np.dtype[np.int64]],
    control: int,
    margin: float,
) -> Metric:
    """The latency p95 guardrail as a share: a variant's p95 is above the control's p95 plus
    the margin exactly when more than 5% of its requests are slower than that threshold. The
    control's observations are the constant 0.05, so the difference path tests the variant's
    share against 5% (the control's p95 is taken as known: it is estimated from its own arm).
    """
    control_latencies = [
        r.latency_ms
        for r, a in zip(compared, arm_codes, strict=True)
        if a == control and r.status == "ok" and r.latency_ms is not None
    ]
    threshold = (percentile(control_latencies, 0.95) or math.inf) + margin
    rows = [i for i, r in enumerate(compared) if r.status == "ok" and r.latency_ms is not None]
    index = np.asarray(rows, dtype=np.int64)
    arms = arm_codes[index]
    slow = np.asarray([float(compared[i].latency_ms or 0.0) > threshold for i in rows], float)
    y = np.where(arms == control, 0.05, slow)
    return Metric(
        "latency_p95", "boolean", False, Stream(unit_codes[index], arms, y, np.ones(len(rows)))
    )


def _first_assignments(
    compared: list[Request],
    unit_codes: np.ndarray[Any, np.dtype[np.int64]],
    arm_codes: np.ndarray[Any, np.dtype[np.int64]],
) -> np.ndarray[Any, np.dtype[np.int64]]:
    """The arm of each distinct unit at its first request, in order of first requests."""
    if not compared:
        return np.zeros(0, dtype=np.int64)
    _, first = np.unique(unit_codes, return_index=True)
    out: np.ndarray[Any, np.dtype[np.int64]] = arm_codes[np.sort(first)]
    return out


def _request_figures(rows: list[Request]) -> dict[str, Any]:
    ok = [r for r in rows if r.status == "ok"]
    latencies = [r.latency_ms for r in ok if r.latency_ms is not None]
    errors = sum(r.status == "error" for r in rows)
    return {
        "n": len(rows),
        "errors": errors,
        "answered_by_fallback": sum(r.answered_by != r.assigned for r in rows),
        "latency_ms": {"p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95)},
        "prompt_tokens": mean_present(r.final.get("prompt_tokens") for r in ok),
        "completion_tokens": mean_present(r.final.get("completion_tokens") for r in ok),
        "cost": mean_present(r.cost for r in rows),
    }


def _apart(rows: list[Request], shadow: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Traffic that is reported but never compared: pinned, promoted, shadow, other."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        out[r.reason if r.reason in ("pinned", "promoted") else "other"][r.assigned] += 1
    for e in shadow:
        out["shadow"][str(e.get("variant"))] += 1
    return {k: dict(v) for k, v in out.items()}


def verdict(
    decision: dict[str, Any], comparisons: list[dict[str, Any]], experiment: ExperimentSpec
) -> str:
    """The decision in one plain paragraph, saying whether it is safe to act."""
    metric = decision["metric"]
    status = decision["status"]
    lead = ""
    if decision.get("promoted"):
        taken = [
            a
            for a in decision.get("actions", [])
            if a["action"] != "undo"
            and not a.get("undone")
            and a["variant"] == decision["promoted"]
        ]
        how = (
            f" ({taken[-1]['action']}, {taken[-1]['actor']}: {taken[-1]['reason']})"
            if taken
            else ""
        )
        lead = (
            f"'{decision['promoted']}' was promoted{how}: it gets all traffic, and what it gets "
            "from then on is reported apart, never compared. "
        )
    spans = []
    for c in comparisons:
        if c["primary"] and c["p_value"] is not None:
            low, high = c["ci95"]
            spans.append(
                f"'{c['variant']}' - '{c['against']}' {c['difference']:+.4g} "
                f"(95% CI {low:+.4g} to {high:+.4g}, adjusted p = {c['p_adjusted']:.3g})"
            )
    figures = f" On {metric}: " + "; ".join(spans) + "." if spans else ""
    if status == "sample_ratio_mismatch":
        text = (
            f"Sample ratio mismatch: {decision['reason']}. Do not act on this experiment until "
            "the cause (assignment, logging, a filter) is found."
        )
    elif status == "guardrail_breach":
        text = f"Do not promote: {decision['reason']} beyond its margin."
    elif status == "winner":
        text = (
            f"{decision['reason']}, and no guardrail is breached. Safe to act: this test stays "
            "valid however often the report was read."
            if experiment.planned_samples is None
            else f"{decision['reason']} at the planned sample size. Safe to act."
        )
    elif status == "no_difference":
        text = f"No difference worth acting on: {decision['reason']}. Safe to stop."
    elif decision["reason"].startswith("fewer than"):
        text = (
            f"Not enough data yet for '{metric}': {decision['reason']} (min_samples, where the "
            "always-valid interval's normal approximation starts to hold). Keep it running."
        )
    else:
        text = (
            f"Keep the experiment running ({decision['reason']}). Reading this report as often "
            "as you like does not change its error rate; acting now would be a guess."
        )
    return lead + text + figures


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
