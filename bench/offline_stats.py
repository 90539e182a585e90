"""The offline statistics of ``gateway eval``, measured: ``python -m bench.offline_stats``.

Every figure comes from the product's own code: ``gateway.evaluation.report.summarise`` (what
``gateway eval`` writes to report.json) on simulated runs, one record per item and variant.
Each rate is printed with its Monte Carlo standard error ``sqrt(p (1 - p) / R)``; the exact
coverage of the accuracy interval (a sum over the binomial distribution, no simulation) is
printed beside the simulated one. Results are recorded in docs/experiments.md.

Items differ in difficulty: an item's chance of a right answer is Beta-distributed around the
variant's accuracy (a + b = 4), the same for two equal variants, so their outcomes are
correlated as on real paired data.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np
from scipy import stats

from gateway.evaluation.data import EvalItem
from gateway.evaluation.report import Records, summarise
from gateway.stats import jeffreys


def rate(hits: int, reps: int) -> str:
    p = hits / reps
    return f"{100 * p:.2f}% ± {100 * math.sqrt(max(p * (1 - p), 1 / reps) / reps):.2f}"


def run(
    rng: np.random.Generator, n: int, accuracies: dict[str, float], concentration: float = 4.0
) -> dict[str, Any]:
    """One simulated run through ``summarise``: ``n`` items, each variant's outcomes."""
    items = [EvalItem(id=f"q{i}", line=i + 1, expected="A") for i in range(n)]
    base = rng.random(n)  # one difficulty per item, shared by the variants
    records: Records = {}
    for name, accuracy in accuracies.items():
        a, b = accuracy * concentration, (1 - accuracy) * concentration
        # The same quantile of each variant's Beta: equal variants get equal chances per item.
        chance = stats.beta.ppf(base, a, b) if concentration else np.full(n, accuracy)
        right = rng.random(n) < chance
        records[name] = {
            item.id: {"correct": bool(r), "status": "ok"}
            for item, r in zip(items, right, strict=True)
        }
    manifest = {
        "chosen": list(accuracies),
        "run_id": "sim",
        "route": "r",
        "data": {},
        "scorer": "mc",
    }
    return summarise(manifest, items, records)


def exact_coverage(n: int, p: float) -> float:
    """P(the Jeffreys interval covers p) for Binomial(n, p), summed exactly."""
    total = 0.0
    for x in range(n + 1):
        low, high = jeffreys(x, n)  # type: ignore[misc]
        if low <= p <= high:
            total += float(stats.binom.pmf(x, n, p))
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=4000, help="simulated runs per case")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    reps = args.reps
    print(f"bench.offline_stats: {reps} runs per case, seed {args.seed}")

    def line(label: str, text: str, started: float) -> None:
        print(f"  {label:<72} {text:>16}   ({time.perf_counter() - started:.0f} s)", flush=True)

    for n in (20, 100):
        for p in (0.05, 0.3, 0.5):
            start = time.perf_counter()
            hits = 0
            for _ in range(reps):
                low, high = run(rng, n, {"v": p}, concentration=0)["variants"]["v"]["accuracy"][
                    "ci95"
                ]
                hits += low <= p <= high
            line(
                f"accuracy interval covers, {n} items, p = {p} (exact: "
                f"{100 * exact_coverage(n, p):.1f}%)",
                rate(hits, reps),
                start,
            )
        start = time.perf_counter()
        grid = np.linspace(0.01, 0.99, 99)
        mean = float(np.mean([exact_coverage(n, float(p)) for p in grid]))
        worst = float(min(exact_coverage(n, float(p)) for p in grid))
        line(
            f"  exact coverage averaged over p = 0.01..0.99, {n} items (lowest)",
            f"{100 * mean:.1f}% ({100 * worst:.1f}%)",
            start,
        )

    for n in (20, 100):
        start = time.perf_counter()
        hits = 0
        for _ in range(reps):
            [c] = run(rng, n, {"a": 0.5, "b": 0.5})["comparisons"]
            hits += c["mcnemar"]["p_value"] <= 0.05
        line(f"McNemar (mid-p), 2 equal variants, {n} items: p <= 0.05", rate(hits, reps), start)

    start = time.perf_counter()
    covered = 0
    truth_rng = np.random.default_rng(0)
    base = truth_rng.random(1_000_000)
    truth = float(np.mean(stats.beta.ppf(base, 1.6, 2.4) - stats.beta.ppf(base, 1.2, 2.8)))
    for _ in range(reps):
        [c] = run(rng, 100, {"a": 0.3, "b": 0.4})["comparisons"]
        low, high = c["ci95"]
        covered += low <= truth <= high
    line(
        f"paired difference interval covers the true {truth:+.3f}, 100 items",
        rate(covered, reps),
        start,
    )

    start = time.perf_counter()
    raw = family = 0
    for _ in range(reps):
        comparisons = run(rng, 100, dict.fromkeys("abcd", 0.5))["comparisons"]
        raw += any(c["mcnemar"]["p_value"] <= 0.05 for c in comparisons)
        family += any(c["mcnemar"]["p_adjusted"] <= 0.05 for c in comparisons)
    line("4 equal variants, 100 items, 6 pairs: any p <= 0.05 (unadjusted)", rate(raw, reps), start)
    line("  same, Holm-adjusted: family-wise false positives", rate(family, reps), start)


if __name__ == "__main__":
    main()
