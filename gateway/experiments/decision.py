"""The decision rule: from per-unit metric streams to ``running | winner | no_difference |
guardrail_breach | sample_ratio_mismatch``.

This is the vectorised core that ``analysis.analyse`` calls with the store's rows turned into
streams, and that the simulation harness (bench/experiments.py) calls with simulated ones, so
the rates in docs/experiments.md are the product's own.

The rule, in order:
1. Sample ratio (comparisons.sample_ratio_path, on distinct units at their first assignment):
   p <= 0.001 blocks everything; the split is broken, so every comparison is suspect.
2. Guardrails: a variant whose always-valid interval of "worse than the control" lies wholly
   above its margin is a breach, and a breach blocks a winner.
3. The primary metric, every pair of weighted variants, Holm-adjusted always-valid p-values (or,
   with ``planned_samples``, the one-look z-test once every arm has reached it). A variant wins
   only when it beats every other arm; intervals and p-values agree by construction.
4. ``no_difference`` when every pair's interval lies inside ``±min_effect`` (or the planned
   one-look test found nothing); otherwise ``running``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats

from gateway.experiments import power
from gateway.experiments.comparisons import (
    SRM_ALPHA,
    difference,
    fixed_difference,
    sample_ratio_path,
)
from gateway.experiments.sequential import half_width, rho2
from gateway.experiments.units import RatioPath, Stream, ratio_path
from gateway.stats import holm

Status = Literal["running", "winner", "no_difference", "guardrail_breach", "sample_ratio_mismatch"]


@dataclass(frozen=True)
class Metric:
    """A metric's observations; ``worse`` is +1 when a higher value is worse, else -1."""

    name: str
    kind: Literal["boolean", "float", "ratio"]
    higher_is_better: bool
    stream: Stream

    @property
    def worse(self) -> float:
        return -1.0 if self.higher_is_better else 1.0


@dataclass(frozen=True)
class Setup:
    arms: list[str]
    control: int
    weights: list[float]
    primary: str
    alpha: float = 0.05
    burn_in: int = 100
    n_star: float = 1000
    planned: int | None = None
    min_effect: float | None = None
    #: guardrail metric -> margin
    guardrails: dict[str, float] = field(default_factory=dict)


@dataclass
class Evaluation:
    figures: dict[str, list[dict[str, Any]]]
    comparisons: list[dict[str, Any]]
    guardrails: list[dict[str, Any]]
    sample_ratio: dict[str, Any] | None
    power: list[dict[str, Any]]
    decision: dict[str, Any]


def _arm_figures(path: RatioPath, arm: int, alpha: float, n_star: float) -> dict[str, Any]:
    if path.ratio.shape[1] == 0 or not np.isfinite(path.ratio[arm, -1]):
        return {
            "n": int(path.units[arm, -1]) if path.ratio.shape[1] else 0,
            "mean": None,
            "ci95": [None, None],
            "ci95_one_look": [None, None],
        }
    r, v, u = float(path.ratio[arm, -1]), float(path.variance[arm, -1]), path.units[arm, -1]
    out: dict[str, Any] = {
        "n": int(u),
        "mean": r,
        "ci95": [None, None],
        "ci95_one_look": [None, None],
    }
    if math.isfinite(v):
        h = float(half_width(np.array([v]), np.array([rho2(n_star, alpha) * u]), alpha)[0])
        # t with U - 1 degrees of freedom: the per-unit variance is estimated from U units.
        z = float(stats.t.ppf(1 - alpha / 2, max(u - 1, 1))) * math.sqrt(v)
        out["ci95"] = [r - h, r + h]
        out["ci95_one_look"] = [r - z, r + z]
    return out


def _pair(metric: Metric, path: RatioPath, a: int, b: int, setup: Setup) -> dict[str, Any]:
    """Arm ``b`` against arm ``a``: the always-valid result, or the planned one-look test."""
    seq = difference(path, a, b, alpha=setup.alpha, n_star=setup.n_star, burn_in=setup.burn_in)
    entry: dict[str, Any] = {
        "variant": setup.arms[b],
        "against": setup.arms[a],
        "metric": metric.name,
        "n": [int(path.units[a, -1]), int(path.units[b, -1])] if path.units.shape[1] else [0, 0],
        "higher_is_better": metric.higher_is_better,
        "difference": None,
        "ci95": [None, None],
        "p_value": None,
        "test": "always-valid mSPRT (normal mixture), delta method per unit",
    }
    last = seq.last()
    if last is not None:
        d, w, p, low, high = last
        entry.update(difference=d, ci95=[low, high], p_value=p, variance=w)
    if setup.planned is not None:
        entry["test"] = f"one-look z-test at {setup.planned} units per variant"
        entry.update(difference=None, ci95=[None, None], p_value=None, reached=False)
        both = np.minimum(path.units[a], path.units[b]) if path.units.shape[1] else np.zeros(0)
        reached = np.flatnonzero(both >= setup.planned)
        if reached.size:
            t = int(reached[0])
            d = float(path.ratio[b, t] - path.ratio[a, t])
            w = float(path.variance[a, t] + path.variance[b, t])
            p, low, high = fixed_difference(d, w, setup.alpha)
            entry.update(difference=d, ci95=[low, high], p_value=p, variance=w, reached=True)
    return entry


def _favours(entry: dict[str, Any]) -> str | None:
    """The arm a significant comparison favours (from the adjusted p and the interval)."""
    if entry.get("p_adjusted") is None or entry["p_adjusted"] > entry["alpha"]:
        return None
    better = (entry["difference"] > 0) == entry["higher_is_better"]
    return str(entry["variant"] if better else entry["against"])


def evaluate(
    setup: Setup, metrics: dict[str, Metric], first_assignments: npt.NDArray[np.int64]
) -> Evaluation:
    k = len(setup.arms)
    paths = {name: ratio_path(m.stream, k) for name, m in metrics.items()}
    figures = {
        name: [_arm_figures(paths[name], i, setup.alpha, setup.n_star) for i in range(k)]
        for name in metrics
    }
    # Sample ratio, on units at their first assignment.
    srm: dict[str, Any] | None = None
    if k >= 2 and len(first_assignments):
        p_path = sample_ratio_path(first_assignments, setup.weights)
        observed = np.bincount(first_assignments, minlength=k)
        total, wsum = int(observed.sum()), sum(setup.weights)
        srm = {
            "observed": dict(zip(setup.arms, map(int, observed), strict=True)),
            "expected": {
                n: round(total * w / wsum, 2)
                for n, w in zip(setup.arms, setup.weights, strict=True)
            },
            "p_value": float(p_path[-1]),
            "alpha": SRM_ALPHA,
            "mismatch": bool(p_path[-1] <= SRM_ALPHA),
            "test": "sequential Dirichlet-multinomial (Lindon & Malek 2022), distinct units",
        }
    # Comparisons: every pair on the primary (Holm over them all), the control against the
    # others on every other metric (Holm within each metric).
    comparisons: list[dict[str, Any]] = []
    for name, metric in metrics.items():
        if name == setup.primary:
            pairs = list(combinations(range(k), 2))
            pairs = [
                (a, b) if a == setup.control or b != setup.control else (b, a) for a, b in pairs
            ]
        else:
            pairs = [(setup.control, b) for b in range(k) if b != setup.control]
        family = [_pair(metric, paths[name], a, b, setup) for a, b in pairs]
        adjusted = holm([1.0 if e["p_value"] is None else e["p_value"] for e in family])
        for entry, p_adj in zip(family, adjusted, strict=True):
            entry["p_adjusted"] = None if entry["p_value"] is None else p_adj
            entry["alpha"] = setup.alpha
            entry["primary"] = name == setup.primary
        comparisons.extend(family)
    guardrails = _guardrails(setup, metrics, paths)
    power_rows = _power(setup, paths.get(setup.primary))
    decision = _decide(setup, comparisons, guardrails, srm, power_rows)
    return Evaluation(figures, comparisons, guardrails, srm, power_rows, decision)


def _guardrails(
    setup: Setup, metrics: dict[str, Metric], paths: dict[str, RatioPath]
) -> list[dict[str, Any]]:
    out = []
    for name, margin in setup.guardrails.items():
        metric = metrics.get(name)
        for b in range(len(setup.arms)):
            if b == setup.control:
                continue
            row: dict[str, Any] = {
                "metric": name,
                "variant": setup.arms[b],
                "against": setup.arms[setup.control],
                "margin": margin,
                "worse_by": None,
                "ci95": [None, None],
                "breach": False,
                "non_inferior": False,
            }
            if metric is not None:
                seq = difference(
                    paths[name],
                    setup.control,
                    b,
                    alpha=setup.alpha,
                    n_star=setup.n_star,
                    burn_in=setup.burn_in,
                )
                last = seq.last()
                if last is not None:
                    d, _, _, low, high = last
                    worse = metric.worse
                    bad = sorted((worse * low, worse * high))
                    row.update(worse_by=worse * d, ci95=bad)
                    row["breach"] = bool(bad[0] > margin)
                    row["non_inferior"] = bool(bad[1] < margin)
            out.append(row)
    return out


def _power(setup: Setup, path: RatioPath | None) -> list[dict[str, Any]]:
    if path is None or path.ratio.shape[1] == 0:
        return []
    out = []
    c = setup.control
    for b in range(len(setup.arms)):
        if b == c:
            continue
        na, nb = path.units[c, -1], path.units[b, -1]
        va, vb = path.variance[c, -1] * na, path.variance[b, -1] * nb
        if not (na > 1 and nb > 1 and math.isfinite(va) and math.isfinite(vb) and va + vb > 0):
            continue
        n = min(na, nb)
        row: dict[str, Any] = {
            "variant": setup.arms[b],
            "against": setup.arms[c],
            "n": int(n),
            "mde_now": power.sequential_mde(va + vb, n, setup.alpha, setup.n_star),
            "mde_now_one_look": power.fixed_mde(va, na, vb, nb, setup.alpha),
            "effect": setup.min_effect,
            "n_needed": None,
            "n_needed_one_look": None,
        }
        if setup.min_effect:
            row["n_needed"] = power.sequential_n(
                va + vb, setup.min_effect, setup.alpha, setup.n_star
            )
            row["n_needed_one_look"] = power.fixed_n(va + vb, setup.min_effect, setup.alpha)
        out.append(row)
    return out


def _decide(
    setup: Setup,
    comparisons: list[dict[str, Any]],
    guardrails: list[dict[str, Any]],
    srm: dict[str, Any] | None,
    power_rows: list[dict[str, Any]],
) -> dict[str, Any]:
    primary = [c for c in comparisons if c["primary"]]
    method = (
        f"one-look z-test at {setup.planned} units per variant"
        if setup.planned is not None
        else "always-valid (mSPRT / confidence sequence): safe to read at any time"
    )
    base: dict[str, Any] = {
        "status": "running",
        "winner": None,
        "metric": setup.primary,
        "alpha": setup.alpha,
        "method": method,
        "beats": [],
        "breaches": [g for g in guardrails if g["breach"]],
        "sample_ratio_p": srm["p_value"] if srm else None,
        "reason": "",
    }
    if len(setup.arms) < 2:
        return {**base, "reason": "fewer than two variants with a weight above 0"}
    if srm and srm["mismatch"]:
        return {
            **base,
            "status": "sample_ratio_mismatch",
            "reason": f"the split of units does not match the weights (p = {srm['p_value']:.2g})",
        }
    if base["breaches"]:
        names = ", ".join(f"'{g['variant']}' on {g['metric']}" for g in base["breaches"])
        return {**base, "status": "guardrail_breach", "reason": f"guardrail breached: {names}"}
    winners = []
    for i, arm in enumerate(setup.arms):
        mine = [c for c in primary if arm in (c["variant"], c["against"])]
        if mine and all(_favours(c) == arm for c in mine):
            winners.append((i, arm, mine))
    if winners:
        _, arm, mine = winners[0]
        beaten = [c["against"] if c["variant"] == arm else c["variant"] for c in mine]
        return {
            **base,
            "status": "winner",
            "winner": arm,
            "beats": beaten,
            "reason": f"'{arm}' beats {', '.join(repr(b) for b in beaten)} on {setup.primary}",
        }
    reached = setup.planned is not None and all(c.get("reached") for c in primary)
    within = setup.min_effect is not None and all(
        c["ci95"][0] is not None
        and -setup.min_effect < c["ci95"][0]
        and c["ci95"][1] < setup.min_effect
        for c in primary
    )
    if primary and (reached or within):
        why = (
            f"the planned {setup.planned} units per variant were reached with no "
            "significant difference"
            if reached
            else f"every interval lies within ±{setup.min_effect:g}, the smallest effect "
            "worth finding"
        )
        return {**base, "status": "no_difference", "reason": why}
    short = [c for c in primary if c["p_value"] is None]
    if short:
        return {
            **base,
            "reason": f"fewer than {setup.burn_in} units in a variant on {setup.primary}",
        }
    return {**base, "reason": "no variant beats every other yet"}
