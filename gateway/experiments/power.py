"""Power: the smallest effect the experiment can find now, and the sample a stated effect needs.

Fixed horizon (one look at a planned size; e.g. Kohavi, Tang & Xu, "Trustworthy Online
Controlled Experiments", 2020, ch. 17)::

    MDE = (z_{1-alpha/2} + z_{power}) * sqrt(V_A / n_A + V_B / n_B)
    n   = (z_{1-alpha/2} + z_{power})^2 * (V_A + V_B) / effect^2        (per arm, equal arms)

Always valid: the confidence sequence is wider than the fixed interval, so the same power
needs more units. ``sequential_n`` solves ``effect = h(n) + z_{power} * sqrt(V / n)`` for ``n``,
``h`` the confidence-sequence half width at ``n`` units per arm (sequential.half_width): the
estimate must clear the boundary at ``n`` with probability ``power``. Crossing earlier only
helps, so this is an upper bound; the harness (bench/experiments.py) measures the real figure.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from gateway.experiments.sequential import half_width, rho2

POWER = 0.8


def _z(alpha: float, power: float) -> float:
    return float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))


def fixed_mde(v_a: float, n_a: float, v_b: float, n_b: float, alpha: float) -> float:
    return _z(alpha, POWER) * math.sqrt(v_a / n_a + v_b / n_b)


def fixed_n(v: float, effect: float, alpha: float) -> int:
    """Units per arm for ``power`` at ``effect``; ``v`` = V_A + V_B."""
    return math.ceil(_z(alpha, POWER) ** 2 * v / effect**2)


def sequential_mde(v: float, n: float, alpha: float, n_star: float) -> float:
    """The effect found with 80% power by ``n`` units per arm; ``v`` = V_A + V_B."""
    w = np.array([v / n])
    r = np.array([rho2(n_star, alpha) * n])
    h = float(half_width(w, r, alpha)[0])
    return h + float(stats.norm.ppf(POWER)) * math.sqrt(v / n)


def sequential_n(v: float, effect: float, alpha: float, n_star: float) -> int:
    """Units per arm for 80% power at ``effect`` with the always-valid test (an upper bound)."""
    low, high = 2.0, 2.0
    while sequential_mde(v, high, alpha, n_star) > effect:
        high *= 2
        if high > 1e12:
            return 10**12
    while high - low > 1:
        mid = (low + high) / 2
        low, high = (mid, high) if sequential_mde(v, mid, alpha, n_star) > effect else (low, mid)
    return math.ceil(high)
