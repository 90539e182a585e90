"""The statistics core against formulas, and its headline error rates by small simulations.

The simulations are the harness's (bench/experiments.py) at a smaller size, seeded, so they
take seconds; the full figures with their Monte Carlo errors are in docs/experiments.md.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.experiments import aa_false_winners, coverage, decide, setup_for, simulate
from gateway.experiments.comparisons import sample_ratio_path
from gateway.experiments.power import fixed_n, sequential_n
from gateway.experiments.sequential import half_width, log_likelihood_ratio, rho2
from gateway.experiments.units import Stream, ratio_path
from gateway.stats import holm


def test_test_and_interval_agree() -> None:
    """L >= 1/alpha exactly when the interval excludes zero (Johari et al.)."""
    w, r, alpha = np.full(5, 0.01), np.full(5, 3.0), 0.05
    h = half_width(w, r, alpha)
    d = np.array([0.5, 0.99, 1.0, 1.01, 2.0]) * h
    crossed = log_likelihood_ratio(d, w, r) >= -math.log(alpha) - 1e-12
    assert list(crossed) == [False, False, True, True, True]
    assert rho2(1000, 0.05) == pytest.approx(
        (-2 * math.log(0.05) + math.log(1 - 2 * math.log(0.05))) / 1000
    )


def test_delta_method_path_matches_by_hand() -> None:
    unit = np.array([0, 1, 0, 2, 1, 2], dtype=np.int64)
    arm = np.zeros(6, dtype=np.int64)
    y = np.array([1.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    path = ratio_path(Stream(unit, arm, y, np.ones(6)), 1)
    ys, ns = np.array([2.0, 1.0, 1.0]), np.array([2.0, 2.0, 2.0])
    r = ys.sum() / ns.sum()
    var = ((ys - r * ns) ** 2).sum() / ns.sum() ** 2 * 3 / 2
    assert path.ratio[0, -1] == pytest.approx(r)
    assert path.variance[0, -1] == pytest.approx(var)
    assert list(path.units[0]) == [1, 2, 2, 3, 3, 3]


def test_holm() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_sample_ratio_is_sequential_and_flags_a_real_skew() -> None:
    rng = np.random.default_rng(1)
    fair = sample_ratio_path(rng.integers(0, 2, 5000), [1.0, 1.0])
    assert (np.diff(fair) <= 0).all() and fair[-1] > 0.001
    skewed = sample_ratio_path((rng.random(20000) < 0.53).astype(np.int64), [1.0, 1.0])
    assert skewed[-1] <= 0.001


def test_power_formulas() -> None:
    v = 0.3 * 0.7 + 0.35 * 0.65
    assert fixed_n(v, 0.05, 0.05) == pytest.approx(1372, abs=2)
    assert fixed_n(v, 0.05, 0.05) < sequential_n(v, 0.05, 0.05, 1000) < 4000


def test_peeking_is_safe_decision_at_every_prefix() -> None:
    """A winner at any earlier look is a winner at the last: polling loses nothing."""
    rng = np.random.default_rng(3)
    setup = setup_for(2)
    for _ in range(20):
        sim = simulate(rng, users_per_arm=400, rates=(0.3, 0.4), max_requests=5)
        cuts = np.linspace(200, sim.stream.y.size, 8).astype(int)
        seen = False
        for cut in cuts:
            s = sim.stream
            prefix = type(sim)(
                Stream(s.unit[:cut], s.arm[:cut], s.y[:cut], s.n[:cut]),
                sim.firsts[: len(np.unique(s.unit[:cut]))],
                sim.truth,
            )
            won = decide(prefix, setup)["winner"] is not None
            assert won or not seen
            seen = won


# -- headline rates (the harness, smaller) ------------------------------------------------------


def test_aa_false_winners_with_sticky_users_under_continuous_peeking() -> None:
    rng = np.random.default_rng(11)
    winners, alarms = aa_false_winners(rng, 300, k=2, users=400, max_requests=20)
    assert winners / 300 <= 0.05
    assert alarms / 300 <= 0.01


def test_four_identical_variants_rarely_name_a_best() -> None:
    rng = np.random.default_rng(12)
    winners, _ = aa_false_winners(rng, 150, k=4, users=200, max_requests=10)
    assert winners / 150 <= 0.05


def test_one_look_intervals_cover() -> None:
    rng = np.random.default_rng(13)
    one, arm, always = coverage(rng, 300, n=300, max_requests=20)
    assert 0.91 <= one / 300 <= 0.98 and 0.91 <= arm / 300 <= 0.98
    assert always / 300 >= 0.93
