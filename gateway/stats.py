"""Statistics for offline evaluation: seeded bootstrap intervals and McNemar's test.

Offline, every variant answers the same items, so differences are paired: McNemar's test looks
only at the items where the two variants disagree, and the interval of the difference
resamples items (both variants' outcomes together), not each variant on its own. The
bootstrap is seeded so that a report is reproducible to the last digit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

RESAMPLES = 2000
SEED = 0
#: below this many discordant pairs the exact binomial test is used, above it chi-square
EXACT_BELOW = 25


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
    """McNemar's test on the discordant pairs of a paired 2x2 table (two-sided).

    Exact binomial test for fewer than 25 discordant pairs; otherwise the chi-square statistic
    with continuity correction, ``(|b - c| - 1)^2 / (b + c)`` on one degree of freedom.
    """
    discordant = a_only + b_only
    if discordant == 0:
        return McNemar(a_only, b_only, None, 1.0, "no discordant pairs")
    if discordant < EXACT_BELOW:
        p_value = float(stats.binomtest(a_only, discordant, 0.5).pvalue)
        return McNemar(a_only, b_only, None, min(1.0, p_value), "exact binomial")
    statistic = (abs(a_only - b_only) - 1) ** 2 / discordant
    p_value = float(stats.chi2.sf(statistic, 1))
    return McNemar(a_only, b_only, statistic, p_value, "chi-square, continuity corrected")
