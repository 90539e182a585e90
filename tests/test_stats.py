"""The offline statistics against figures worked out by hand: Jeffreys, Wilson, Bonett-Price,
mid-p McNemar, Holm, and the bootstrap kept for other figures."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from gateway.stats import (
    bootstrap_mean,
    bootstrap_paired_difference,
    holm,
    jeffreys,
    mcnemar,
    paired_difference,
    wilson,
)


def test_bootstrap_interval_is_the_binomial_quantiles() -> None:
    # Resampling 10 outcomes with 5 successes draws the mean from Binomial(10, 1/2) / 10.
    # Its 2.5% quantile is 0.2 (P(X <= 1) = 11/1024 < 0.025 <= P(X <= 2) = 56/1024) and its
    # 97.5% quantile 0.8 (P(X <= 7) = 968/1024 < 0.975 <= P(X <= 8) = 1013/1024). Both lie
    # well inside a probability step, so 2000 resamples give them for any seed.
    values = [1.0] * 5 + [0.0] * 5
    for seed in range(5):
        assert bootstrap_mean(values, seed=seed) == pytest.approx((0.2, 0.8))
    # Seeded: the same call gives the same digits, also where the quantile is borderline
    # (7 of 10: P(X = 10) = 0.028 is close to 0.025, so the upper end depends on the draw).
    skewed = [1.0] * 7 + [0.0] * 3
    assert bootstrap_mean(skewed, seed=0) == bootstrap_mean(skewed, seed=0) == (0.4, 1.0)
    assert bootstrap_mean(skewed, seed=1) == (0.4, 0.9)


def test_bootstrap_degenerate_cases() -> None:
    assert bootstrap_mean([]) is None
    assert bootstrap_mean([1.0] * 5) == (1.0, 1.0)
    assert bootstrap_mean([0.0]) == (0.0, 0.0)


def test_bootstrap_matches_the_normal_approximation_for_a_large_sample() -> None:
    # n = 400, p = 0.5: the interval is about 0.5 +- 1.96 * sqrt(0.25 / 400) = 0.5 +- 0.049.
    low, high = bootstrap_mean([1.0, 0.0] * 200)  # type: ignore[misc]
    half = 1.96 * math.sqrt(0.25 / 400)
    assert low == pytest.approx(0.5 - half, abs=0.006)
    assert high == pytest.approx(0.5 + half, abs=0.006)


def test_paired_difference_resamples_items_together() -> None:
    # b is a plus one more right answer: every resample has b - a in {0, 1/n}, never negative.
    a = [1.0, 0.0, 0.0, 1.0, 0.0]
    b = [1.0, 1.0, 0.0, 1.0, 0.0]
    low, high = bootstrap_paired_difference(a, b)  # type: ignore[misc]
    assert low >= 0.0 and high <= 0.6
    # Identical outcomes: no difference at all, whatever the resample.
    assert bootstrap_paired_difference(a, a) == (0.0, 0.0)
    with pytest.raises(ValueError):
        bootstrap_paired_difference(a, b[:-1])


def test_mcnemar_mid_p_on_a_small_table() -> None:
    # 10 items only a got right, 2 only b: the exact two-sided p is 2 * P(X <= 2 | 12, 1/2)
    # = 2 * (1 + 12 + 66) / 4096 = 158 / 4096; mid-p takes off P(X = 2) = 66 / 4096.
    result = mcnemar(10, 2)
    assert result.method == "mid-p"
    assert result.p_value == pytest.approx(92 / 4096)
    assert mcnemar(2, 10).p_value == pytest.approx(92 / 4096)
    # A balanced table: 2 P(X <= 3 | 6) - P(X = 3) = 2 * 42/64 - 20/64 = 1.
    assert mcnemar(3, 3).p_value == pytest.approx(1.0)
    # 4 discordant pairs all one way: 2 / 16 - 1 / 16.
    assert mcnemar(4, 0).p_value == pytest.approx(1 / 16)


def test_mcnemar_mid_p_on_a_large_table_is_near_the_uncorrected_chi_square() -> None:
    # 30 against 15: exact 2 P(X <= 15 | 45); mid-p sits between it and the uncorrected
    # chi-square p = erfc(sqrt(225 / 45 / 2)) = 0.0253 (Fagerland et al. 2013).
    result = mcnemar(30, 15)
    exact = 2 * stats.binom.cdf(15, 45, 0.5)
    assert result.p_value == pytest.approx(exact - stats.binom.pmf(15, 45, 0.5))
    assert math.erfc(math.sqrt(225 / 45 / 2)) < result.p_value < exact


def test_jeffreys_and_wilson_by_hand() -> None:
    # Jeffreys: the Beta(x + 1/2, n - x + 1/2) quantiles; ends at 0 and 1 at x = 0 and x = n.
    low, high = jeffreys(3, 20)  # type: ignore[misc]
    assert low == pytest.approx(stats.beta.ppf(0.025, 3.5, 17.5))
    assert high == pytest.approx(stats.beta.ppf(0.975, 3.5, 17.5))
    assert jeffreys(0, 20)[0] == 0.0 and jeffreys(20, 20)[1] == 1.0  # type: ignore[index]
    assert jeffreys(0, 0) is None
    with pytest.raises(ValueError):
        jeffreys(3, 2)
    # Wilson at 5 of 10: centre 0.5, half-width z sqrt(0.025 + z^2/400) / (1 + z^2/10).
    z = 1.959963984540054
    half = z * math.sqrt(0.025 + z * z / 400) / (1 + z * z / 10)
    assert wilson(5, 10) == pytest.approx((0.5 - half, 0.5 + half))


def test_bonett_price_paired_difference_by_hand() -> None:
    # 15 only a, 31 only b of 100: p12 = 16/102, p21 = 32/102, d = 16/102.
    low, high = paired_difference(15, 31, 100)  # type: ignore[misc]
    p12, p21 = 16 / 102, 32 / 102
    half = 1.959963984540054 * math.sqrt((p12 + p21 - (p21 - p12) ** 2) / 102)
    assert (low, high) == pytest.approx((p21 - p12 - half, p21 - p12 + half))
    assert paired_difference(0, 0, 0) is None
    assert paired_difference(0, 10, 10)[1] == 1.0  # type: ignore[index]


def test_holm() -> None:
    # Sorted 0.01, 0.02, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.02), max(0.04, 1 * 0.04).
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == []


def test_mcnemar_without_discordant_pairs() -> None:
    result = mcnemar(0, 0)
    assert result.p_value == 1.0 and result.statistic is None
