"""Statistics for offline evaluation: accuracy intervals, paired differences, McNemar, Holm.

Offline, every variant answers the same items, so differences are paired: McNemar's test looks
only at the items where the two variants disagree, and the interval of the difference is the
paired one. What the report uses, and why (measured by ``python -m bench.offline_stats``,
recorded in docs/experiments.md):

- Accuracy: the Jeffreys interval (the equal-tailed Beta(x + 1/2, n - x + 1/2) interval, with
  the ends at 0 and 1 when x = 0 or n: Brown, Cai & DasGupta, Stat. Sci. 2001). The percentile
  bootstrap it replaces covered 64% at 20 items and p = 0.05: resampling 20 items that hold one
  or no success cannot show the spread of the population's rate.
- The paired difference: the Bonett-Price adjusted Wald interval (Bonett & Price, 2012; one of
  the intervals Fagerland, Lydersen & Laake, Stat. Methods Med. Res. 2014, recommend).
- McNemar's test: the mid-p version (Fagerland, Lydersen & Laake, BMC Med. Res. Methodol.
  2013): the exact conditional binomial p-value minus half the probability of the observed
  table. The exact test is conservative (3.3% false positives at 100 items, EXPERIMENTS.md);
  the mid-p test is close to nominal and, as Fagerland et al. found, does not exceed it.
- Several variants: Holm's step-down adjustment over every pair (``holm``), which keeps the
  family-wise rate at or below alpha; the report shows the adjusted p-values.

The bootstrap stays for other figures a report may want (seeded: reproducible to the digit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

RESAMPLES = 2000
SEED = 0


def bootstrap_mean(
    values: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float] | None:
    """The percentile bootstrap 95% interval of the mean, or None without data."""
    if not values:
        return None
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(data), size=(resamples, len(data)))
    means = data[index].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def bootstrap_paired_difference(
    a: Sequence[float], b: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float] | None:
    """The 95% interval of mean(b) - mean(a) over paired items (resampled together)."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    return bootstrap_mean(
        [y - x for x, y in zip(a, b, strict=True)], resamples=resamples, seed=seed
    )


Z95 = 1.959963984540054


def jeffreys(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float] | None:
    """The Jeffreys interval of a binomial proportion, or None without data."""
    if n == 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes in {n} trials")
    a, b = successes + 0.5, n - successes + 0.5
    low = 0.0 if successes == 0 else float(stats.beta.ppf(alpha / 2, a, b))
    high = 1.0 if successes == n else float(stats.beta.ppf(1 - alpha / 2, a, b))
    return low, high


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a binomial proportion (Wilson, JASA 1927), or None."""
    if n == 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * float(np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(
    a_only: int, b_only: int, n: int, z: float = Z95
) -> tuple[float, float] | None:
    """The Bonett-Price interval of accuracy(b) - accuracy(a) over ``n`` paired items, of which
    ``a_only`` only a got right and ``b_only`` only b: with ``p12 = (a_only + 1) / (n + 2)``
    and ``p21 = (b_only + 1) / (n + 2)``, ``d = p21 - p12`` and
    ``d ± z sqrt((p12 + p21 - d^2) / (n + 2))``, clipped to [-1, 1]."""
    if n == 0:
        return None
    p12, p21 = (a_only + 1) / (n + 2), (b_only + 1) / (n + 2)
    d = p21 - p12
    half = z * float(np.sqrt(max(p12 + p21 - d * d, 0.0) / (n + 2)))
    return max(-1.0, d - half), min(1.0, d + half)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the given order (reject those at or below alpha)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class McNemar:
    #: items only the first variant got right
    a_only: int
    #: items only the second variant got right
    b_only: int
    statistic: float | None
    p_value: float
    method: str


def mcnemar(a_only: int, b_only: int) -> McNemar:
    """The mid-p McNemar test on the discordant pairs of a paired 2x2 table (two-sided).

    With ``k = min(a_only, b_only)`` of ``m = a_only + b_only`` discordant pairs, under the null
    ``K ~ Binomial(m, 1/2)``: ``p = 2 P(K <= k) - P(K = k)`` (the exact p-value minus half the
    observed table's probability), at most 1. Exact at any size: no chi-square approximation.
    """
    discordant = a_only + b_only
    if discordant == 0:
        return McNemar(a_only, b_only, None, 1.0, "no discordant pairs")
    k = min(a_only, b_only)
    p_value = 2 * float(stats.binom.cdf(k, discordant, 0.5)) - float(
        stats.binom.pmf(k, discordant, 0.5)
    )
    return McNemar(a_only, b_only, None, min(1.0, p_value), "mid-p")
