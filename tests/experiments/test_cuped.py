"""CUPED (gateway.experiments.cuped): theta by hand, the difference kept, the variance cut."""

from __future__ import annotations

import numpy as np
import pytest

from bench.experiments import covariate_sim
from gateway.experiments.cuped import adjust, theta
from gateway.experiments.units import Stream, ratio_path


def test_theta_by_hand_and_a_constant_covariate() -> None:
    stream = Stream(np.arange(4), np.array([0, 0, 1, 1]), np.array([0.0, 1, 1, 2]), np.ones(4))
    x = np.array([0.0, 1, 1, 2])
    assert theta(stream, x) == pytest.approx(1.0)  # y = x exactly
    assert np.allclose(adjust(stream, x).y, 1.0)  # all the variance was the covariate's
    assert theta(stream, np.ones(4)) == 0.0


def test_the_difference_is_kept_and_its_variance_shrinks_by_one_minus_rho_squared() -> None:
    sim, x = covariate_sim(np.random.default_rng(1), users_per_arm=20000, rates=(0.3, 0.35))
    plain, cuped = ratio_path(sim.stream, 2), ratio_path(adjust(sim.stream, x), 2)
    d_plain = plain.ratio[1, -1] - plain.ratio[0, -1]
    d_cuped = cuped.ratio[1, -1] - cuped.ratio[0, -1]
    assert d_cuped == pytest.approx(d_plain, abs=0.005)
    rho2 = np.corrcoef(x, sim.stream.y)[0, 1] ** 2
    ratio = cuped.variance[:, -1].sum() / plain.variance[:, -1].sum()
    assert ratio == pytest.approx(1 - rho2, abs=0.01)
