"""Bootstrap intervals and McNemar's test against figures worked out by hand."""

from __future__ import annotations

import math

import pytest

from gateway.stats import bootstrap_mean, bootstrap_paired_difference, mcnemar


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


def test_mcnemar_exact_on_a_small_table() -> None:
    # 10 items only a got right, 2 only b: two-sided exact binomial, 2 * P(X <= 2 | 12, 1/2)
    # = 2 * (1 + 12 + 66) / 4096 = 0.0385742...
    result = mcnemar(10, 2)
    assert result.method == "exact binomial"
    assert result.p_value == pytest.approx(158 / 4096)
    assert mcnemar(2, 10).p_value == pytest.approx(158 / 4096)
    assert mcnemar(3, 3).p_value == pytest.approx(1.0)


def test_mcnemar_chi_square_on_a_large_table() -> None:
    # 30 against 15: (|30 - 15| - 1)^2 / 45 = 196 / 45 = 4.3556; one degree of freedom, so
    # p = erfc(sqrt(chi2 / 2)) = 0.03689...
    result = mcnemar(30, 15)
    assert result.method.startswith("chi-square")
    assert result.statistic == pytest.approx(196 / 45)
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(196 / 45 / 2)))
    assert result.p_value == pytest.approx(0.03689, abs=1e-5)


def test_mcnemar_without_discordant_pairs() -> None:
    result = mcnemar(0, 0)
    assert result.p_value == 1.0 and result.statistic is None
