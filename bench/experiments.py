"""The experiment statistics, measured: ``python -m bench.experiments [--reps N] [--seed S]``
(``--case coverage --sizes 100`` runs one case at one size; ``--help`` lists the cases).

Every figure comes from the product's own code: ``gateway.experiments.decision.evaluate`` (the
core ``analyse`` calls) on simulated streams shaped like the store's rows, and ``analyse``
itself on simulated event and feedback rows for the row-level cases (fallbacks, pins, weight-0
variants). Each figure is printed with its Monte Carlo standard error ``sqrt(p (1 - p) / R)``.
Results are recorded in docs/experiments.md.

Continuous peeking: the always-valid p-value is the running minimum over looks and the interval
the running intersection, so the decision ``evaluate`` returns at the last look is "winner" if
and only if a look after any earlier request would have shown it (tests/experiments checks this
on prefixes). A/A "false winner" rates below are therefore rates for a user who polls the
endpoint after every request and stops at the first winner.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.config.loader import parse_config
from gateway.experiments.analysis import analyse
from gateway.experiments.cuped import adjust
from gateway.experiments.decision import Metric, Setup, evaluate
from gateway.experiments.units import Stream, ratio_path

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Sim:
    """One simulated experiment's primary-metric stream and first assignments."""

    stream: Stream
    firsts: Ints
    truth: Floats  # true per-arm means


def simulate(
    rng: np.random.Generator,
    *,
    users_per_arm: int,
    rates: tuple[float, ...],
    max_requests: int = 20,
    concentration: float = 4.0,
) -> Sim:
    """Sticky users (1..max_requests requests each) with user effects, arrivals interleaved.

    A user's success rate is Beta with mean ``rates[arm]`` and ``a + b = concentration`` (a
    small concentration = strong user effects); each arm gets users with probability 1/k.
    ``max_requests = 1`` is per-request assignment.
    """
    k = len(rates)
    users = users_per_arm * k
    arm = rng.integers(0, k, size=users)
    mean = np.asarray(rates)[arm]
    if max_requests > 1:
        p = rng.beta(mean * concentration, (1 - mean) * concentration)
        counts = rng.integers(1, max_requests + 1, size=users)
    else:
        p = mean
        counts = np.ones(users, dtype=np.int64)
    unit = np.repeat(np.arange(users), counts)
    y = (rng.random(unit.size) < p[unit]).astype(float)
    order = np.argsort(rng.random(unit.size), kind="stable")
    unit, y = unit[order], y[order]
    _, first = np.unique(unit, return_index=True)
    firsts = arm[unit[np.sort(first)]]
    # The estimand is the population rate (user effects average out), not this sample's.
    return Sim(Stream(unit, arm[unit], y, np.ones(unit.size)), firsts, np.asarray(rates))


def setup_for(k: int, **kw: Any) -> Setup:
    return Setup(arms=[f"v{i}" for i in range(k)], control=0, weights=[1.0] * k, primary="m", **kw)


def decide(sim: Sim, setup: Setup) -> dict[str, Any]:
    metric = Metric("m", "boolean", True, sim.stream)
    return evaluate(setup, {"m": metric}, sim.firsts).decision


def rate(hits: int, reps: int) -> str:
    p = hits / reps
    return f"{100 * p:.2f}% ± {100 * math.sqrt(max(p * (1 - p), 1 / reps) / reps):.2f}"


# -- the cases -----------------------------------------------------------------------------------


def aa_false_winners(
    rng: np.random.Generator, reps: int, *, k: int, users: int, max_requests: int
) -> tuple[int, int]:
    """(false winners, sample-ratio false alarms) in A/A experiments polled after every request."""
    setup = setup_for(k)
    winners = alarms = 0
    for _ in range(reps):
        d = decide(
            simulate(rng, users_per_arm=users, rates=(0.3,) * k, max_requests=max_requests), setup
        )
        winners += d["winner"] is not None
        alarms += d["status"] == "sample_ratio_mismatch"
    return winners, alarms


def coverage(
    rng: np.random.Generator, reps: int, *, n: int, max_requests: int
) -> tuple[int, int, int]:
    """(one-look difference covers, per-arm one-look covers, confidence sequence covers at every
    look from the burn-in to ``n``), for 0.30 vs 0.35, against the true difference."""
    setup = setup_for(2)
    one = arm = always = 0
    for _ in range(reps):
        sim = simulate(rng, users_per_arm=n, rates=(0.3, 0.35), max_requests=max_requests)
        # Cut at n units per arm, as a user who reads the one-look interval there.
        result = evaluate(setup, {"m": Metric("m", "boolean", True, sim.stream)}, sim.firsts)
        true_d = float(sim.truth[1] - sim.truth[0])
        fig = result.figures["m"]
        low, high = fig[0]["ci95_one_look"]
        arm += low is not None and low <= sim.truth[0] <= high
        path = ratio_path(sim.stream, 2)
        d = path.ratio[1, -1] - path.ratio[0, -1]
        se = math.sqrt(path.variance[0, -1] + path.variance[1, -1])
        one += abs(d - true_d) <= 1.959963984540054 * se
        c = result.comparisons[0]
        always += c["ci95"][0] is not None and c["ci95"][0] <= true_d <= c["ci95"][1]
    return one, arm, always


def stopping_users(
    rng: np.random.Generator, reps: int, *, lift: tuple[float, float], max_users: int, **kw: Any
) -> Floats:
    """Users per arm at the first look where the always-valid test finds the lift (inf: never)."""
    out = np.full(reps, np.inf)
    setup = setup_for(2, **kw)
    for i in range(reps):
        sim = simulate(rng, users_per_arm=max_users, rates=lift, max_requests=1)
        result = evaluate(setup, {"m": Metric("m", "boolean", True, sim.stream)}, sim.firsts)
        if result.decision["winner"] == "v1":
            path = ratio_path(sim.stream, 2)
            from gateway.experiments.comparisons import difference

            seq = difference(path, 0, 1, alpha=0.05, n_star=setup.n_star, burn_in=setup.burn_in)
            t = int(np.flatnonzero(seq.p <= 0.05)[0])
            out[i] = float(path.units[:, t].min())
    return out


def covariate_sim(
    rng: np.random.Generator, *, users_per_arm: int, rates: tuple[float, float], history: int = 5
) -> tuple[Sim, Floats]:
    """One request per user with user effects, and each user's covariate: the share right of
    ``history`` requests before the experiment.

    A user's ability is one quantile ``q`` of the Beta user effects (a + b = 4): their rate is
    the quantile of their arm's Beta, their history's rate that of the control's (before the
    experiment everyone had the control).
    """
    from scipy import stats

    users = users_per_arm * 2
    arm = rng.integers(0, 2, size=users)
    q = rng.random(users)
    control = stats.beta.ppf(q, rates[0] * 4.0, (1 - rates[0]) * 4.0)
    treated = stats.beta.ppf(q, rates[1] * 4.0, (1 - rates[1]) * 4.0)
    p = np.where(arm == 0, control, treated)
    x = rng.binomial(history, control) / history
    y = (rng.random(users) < p).astype(float)
    sim = Sim(Stream(np.arange(users), arm, y, np.ones(users)), arm.copy(), np.asarray(rates))
    return sim, np.asarray(x, dtype=float)


def first_stop(sim: Sim, setup: Setup) -> float:
    """Users per arm at the first look where the always-valid test finds v1 (inf: never)."""
    from gateway.experiments.comparisons import difference

    result = evaluate(setup, {"m": Metric("m", "boolean", True, sim.stream)}, sim.firsts)
    if result.decision["winner"] != "v1":
        return math.inf
    path = ratio_path(sim.stream, 2)
    seq = difference(path, 0, 1, alpha=0.05, n_star=setup.n_star, burn_in=setup.burn_in)
    return float(path.units[:, int(np.flatnonzero(seq.p <= 0.05)[0])].min())


def case_cuped(rng: np.random.Generator, reps: int, _sizes: list[int]) -> None:
    """CUPED (gateway.experiments.cuped) on the same simulated experiments as without it."""
    setup = setup_for(2)
    runs = max(200, reps // 4)
    start = time.perf_counter()
    plain, adjusted = np.full(runs, np.inf), np.full(runs, np.inf)
    for i in range(runs):
        sim, x = covariate_sim(rng, users_per_arm=4000, rates=(0.30, 0.35))
        plain[i] = first_stop(sim, setup)
        cuped = Sim(adjust(sim.stream, x), sim.firsts, sim.truth)
        adjusted[i] = first_stop(cuped, setup)
    for label, stops in (("without CUPED", plain), ("with CUPED", adjusted)):
        found = np.isfinite(stops)
        n80 = float(np.quantile(stops, 0.8)) if found.mean() >= 0.8 else math.inf
        line(
            f"0.30 -> 0.35 {label} ({runs} runs): users per arm by which 80% found it",
            f"{n80:,.0f}",
            start,
        )
        line("  found by 4,000 users per arm", rate(int(found.sum()), runs), start)
    start = time.perf_counter()
    winners = 0
    aa = max(200, reps // 2)
    rhos = []
    for _ in range(aa):
        sim, x = covariate_sim(rng, users_per_arm=2000, rates=(0.30, 0.30))
        rhos.append(float(np.corrcoef(x, sim.stream.y)[0, 1]))
        cuped = Sim(adjust(sim.stream, x), sim.firsts, sim.truth)
        winners += decide(cuped, setup)["winner"] is not None
    line(
        f"A/A with CUPED, 2,000 users per arm, polled after every request ({aa})",
        rate(winners, aa),
        start,
    )
    rho2 = float(np.mean(rhos)) ** 2
    line("  mean rho^2 between covariate and outcome (variance cut)", f"{rho2:.3f}", start)


# -- row-level cases through analyse --------------------------------------------------------------

ROUTE = """
models: {m: {engine: vllm, urls: ["http://127.0.0.1:9"]}}
routes:
  r:
    sticky_key: user
    allow_pin: true
    variants: {a: {target: m, weight: 50}, b: {target: m, weight: 50}, c: {target: m, weight: 0}}
    fallback: [a]
    experiment: {metrics: {correct: {type: boolean}}}
"""


def rows(
    rng: np.random.Generator,
    *,
    users: int,
    hard_share: float = 0.3,
    b_fails_hard: float = 0.0,
    pinned: int = 0,
    pinned_rate: float = 0.9,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Store rows of an A/A route: sticky users, hard prompts (rate 0.1, easy 0.5); ``b`` fails
    retryably on a share of hard prompts, which fall back to ``a``; pinned requests to ``b``."""
    events: list[dict[str, Any]] = []
    feedback: list[dict[str, Any]] = []
    ts = 0.0
    for u in range(users):
        arm = "ab"[int(rng.integers(0, 2))]
        for _ in range(int(rng.integers(1, 21))):
            ts += 1.0
            hard = rng.random() < hard_share
            p = 0.1 if hard else 0.5
            base = {"route": "r", "assignment": "sticky", "key_hash": f"u{u}", "source": "online"}
            eid = f"e{len(events)}"
            if arm == "b" and hard and rng.random() < b_fails_hard:
                events.append(
                    {
                        **base,
                        "id": eid,
                        "ts": ts,
                        "variant": "b",
                        "attempt": 0,
                        "status": "error",
                        "fallback_from": None,
                    }
                )
                eid = f"e{len(events)}"
                events.append(
                    {
                        **base,
                        "id": eid,
                        "ts": ts + 0.1,
                        "variant": "a",
                        "attempt": 1,
                        "status": "ok",
                        "fallback_from": "b",
                        "latency_ms": 1.0,
                    }
                )
            else:
                events.append(
                    {
                        **base,
                        "id": eid,
                        "ts": ts,
                        "variant": arm,
                        "attempt": 0,
                        "status": "ok",
                        "latency_ms": 1.0,
                    }
                )
            feedback.append(
                {"inference_id": eid, "name": "correct", "value": float(rng.random() < p), "ts": ts}
            )
    for i in range(pinned):
        eid = f"p{i}"
        events.append(
            {
                "id": eid,
                "ts": float(i),
                "route": "r",
                "variant": "b",
                "attempt": 0,
                "assignment": "pinned",
                "status": "ok",
                "source": "online",
            }
        )
        feedback.append(
            {
                "inference_id": eid,
                "name": "correct",
                "value": float(rng.random() < pinned_rate),
                "ts": float(i),
            }
        )
    return events, feedback


def row_case(
    rng: np.random.Generator, reps: int, make: Callable[[], tuple[list[Any], list[Any]]]
) -> tuple[int, int]:
    """(false winners, reports with a decision other than running) over ``reps`` experiments."""
    spec = parse_config(ROUTE, "bench.yaml").routes["r"]
    winners = decided = 0
    for _ in range(reps):
        events, feedback = make()
        d = analyse("r", spec, events, feedback)["decision"]
        winners += d["winner"] is not None
        decided += d["status"] != "running"
    return winners, decided


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=2000, help="experiments per case")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--case",
        action="append",
        choices=CASES,
        help="run only this case (repeatable); default: all. Each case draws from its own "
        "generator, seeded from --seed and the case's place in the list, so a case's figures "
        "do not depend on which others run",
    )
    parser.add_argument(
        "--sizes",
        default="100,500,2000",
        help="users per arm for the coverage case, comma-separated",
    )
    args = parser.parse_args(argv)
    reps = args.reps
    chosen = args.case or list(CASES)
    print(f"bench.experiments: {reps} experiments per case, seed {args.seed}, cases {chosen}")
    for name in chosen:
        rng = np.random.default_rng([args.seed, list(CASES).index(name)])
        CASES[name](rng, reps, [int(s) for s in args.sizes.split(",")])


def line(label: str, text: str, started: float) -> None:
    print(f"  {label:<78} {text:>16}   ({time.perf_counter() - started:.0f} s)", flush=True)


def case_aa(rng: np.random.Generator, reps: int, _sizes: list[int]) -> None:
    start = time.perf_counter()
    w, a = aa_false_winners(rng, reps, k=2, users=2000, max_requests=1)
    line(
        "A/A, per request, 2,000 per arm, polled after every request: false winners",
        rate(w, reps),
        start,
    )
    start = time.perf_counter()
    w, a = aa_false_winners(rng, reps, k=2, users=1000, max_requests=20)
    line(
        "A/A, sticky users (1-20 requests, user effects), 1,000 users per arm: false winners",
        rate(w, reps),
        start,
    )
    line("  same: sample-ratio false alarms", rate(a, reps), start)


def case_four(rng: np.random.Generator, reps: int, _sizes: list[int]) -> None:
    start = time.perf_counter()
    w, a = aa_false_winners(rng, reps, k=4, users=500, max_requests=20)
    line(
        "A/A/A/A, 4 identical variants, sticky users, 500 users per arm: false 'best'",
        rate(w, reps),
        start,
    )
    line("  same: sample-ratio false alarms", rate(a, reps), start)


def case_coverage(rng: np.random.Generator, reps: int, sizes: list[int]) -> None:
    for n in sizes:
        start = time.perf_counter()
        one, arm, always = coverage(rng, reps, n=n, max_requests=20)
        line(
            f"coverage, sticky users, {n} users per arm: one-look 95% interval of the difference",
            rate(one, reps),
            start,
        )
        line("  one-look 95% interval of an arm's rate", rate(arm, reps), start)
        if n > 100:  # the always-valid interval starts at the 100-unit burn-in
            line(
                f"  always-valid interval covers at every look from 100 to {n}",
                rate(always, reps),
                start,
            )


def case_power(rng: np.random.Generator, reps: int, _sizes: list[int]) -> None:
    start = time.perf_counter()
    power_reps = max(200, reps // 4)
    stops = stopping_users(rng, power_reps, lift=(0.30, 0.35), max_users=4000)
    found = np.isfinite(stops)
    n80 = float(np.quantile(stops, 0.8)) if found.mean() >= 0.8 else math.inf
    line(
        f"0.30 -> 0.35, one request per user: found by 4,000 users per arm ({power_reps} runs)",
        rate(int(found.sum()), power_reps),
        start,
    )
    line("  users per arm by which 80% of experiments found it", f"{n80:,.0f}", start)
    line(
        "  median users per arm at the stop (of those found)",
        f"{float(np.median(stops[found])):,.0f}",
        start,
    )


def case_rows(rng: np.random.Generator, reps: int, _sizes: list[int]) -> None:
    row_reps = max(100, reps // 10)
    start = time.perf_counter()
    w, _ = row_case(rng, row_reps, lambda: rows(rng, users=300, b_fails_hard=0.1))
    line(
        f"analyse rows: equal variants, b fails 10% of hard prompts -> fallback to a ({row_reps})",
        rate(w, row_reps),
        start,
    )
    start = time.perf_counter()
    w, _ = row_case(rng, row_reps, lambda: rows(rng, users=300, pinned=500))
    line(
        f"analyse rows: A/A plus 500 pinned requests to b at 0.9 ({row_reps})",
        rate(w, row_reps),
        start,
    )


Case = Callable[[np.random.Generator, int, list[int]], None]
CASES: dict[str, Case] = {
    "aa": case_aa,
    "four": case_four,
    "coverage": case_coverage,
    "power": case_power,
    "rows": case_rows,
    "cuped": case_cuped,
}


if __name__ == "__main__":
    main()
