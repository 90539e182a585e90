"""Always-valid inference: intervals and p-values that stay valid however often they are read.

A fixed-sample test is valid at one look. The live endpoint invites a look after every request,
and stopping at the first "significant" look makes a 5% test name a false winner 27-41% of the
time (measured: /work/shared/EXPERIMENTS.md). This module holds the mixture sequential
probability ratio test (mSPRT; Johari, Koomen, Pekelis & Walsh, "Always Valid Inference:
Continuous Monitoring of A/B Tests", Operations Research 2022) in its asymptotic form, which is
the normal-mixture asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy &
Ramdas ("Time-uniform central limit theory and asymptotic confidence sequences", Ann. Stat.
2024).

With an estimate ``D`` (a mean, or a difference of means), its variance ``W`` and a mixing
variance ``t2 = r * W``::

    L  = sqrt(W / (W + t2)) * exp(t2 * D^2 / (2 * W * (W + t2)))
       = (1 + r)^(-1/2) * exp(r * D^2 / (2 * W * (1 + r)))
    p_n = min(p_{n-1}, 1 / L_n)                       (the always-valid p-value)
    D  ± sqrt(W * (1 + 1/r) * ln((1 + r) / alpha^2))  (the confidence sequence)

``L >= 1/alpha`` exactly when the interval excludes zero, so the test and the interval always
agree. ``t2 = rho2 * V`` with ``V`` the per-unit variance (``W = V / n``), hence ``r = rho2 * n``;
``rho2 = (-2 ln alpha + ln(1 - 2 ln alpha)) / n_star`` makes the interval tightest at ``n_star``
units (Waudby-Smith et al., eq. for the optimal rho). Before ``burn_in`` units per arm the
central-limit approximation is not trusted and nothing is decided.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]


def rho2(n_star: float, alpha: float) -> float:
    """The mixing precision that makes the confidence sequence tightest at ``n_star`` units."""
    la = -2.0 * math.log(alpha)
    return (la + math.log(1.0 + la)) / n_star


def half_width(w: Array, r: Array, alpha: float) -> Array:
    """The confidence-sequence half width for variance ``w`` and ``r = t2 / w``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out: Array = np.sqrt(w * (1.0 + 1.0 / r) * np.log((1.0 + r) / alpha**2))
    return out


def log_likelihood_ratio(d: Array, w: Array, r: Array) -> Array:
    """ln L of the normal-mixture SPRT for H0: the true value is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out: Array = -0.5 * np.log1p(r) + r * d * d / (2.0 * w * (1.0 + r))
    return out


@dataclass(frozen=True)
class Path:
    """The sequence read at every look: estimates, current intervals and the running results.

    ``p`` is the running minimum of ``1/L`` from the first valid look; ``low``/``high`` the
    running intersection of the intervals (also a confidence sequence, and the one that agrees
    with ``p``). Looks before the burn-in, or with no variance yet, have ``valid`` False.
    """

    estimate: Array
    variance: Array
    valid: npt.NDArray[np.bool_]
    p: Array
    low: Array
    high: Array

    def last(self) -> tuple[float, float, float, float, float] | None:
        """(estimate, variance, p, low, high) at the last look, or None if none was valid."""
        if not self.valid.any():
            return None
        return (
            float(self.estimate[-1]),
            float(self.variance[-1]),
            float(self.p[-1]),
            float(self.low[-1]),
            float(self.high[-1]),
        )


def sequence(
    estimate: Array,
    variance: Array,
    units: Array,
    *,
    alpha: float,
    n_star: float,
    valid: npt.NDArray[np.bool_],
) -> Path:
    """The always-valid path over looks.

    ``units`` is the effective number of units at each look (``per-unit variance / variance``:
    for a difference, the harmonic-like count ``(V_A + V_B) / W``), so that ``r = rho2 * units``.
    """
    r = rho2(n_star, alpha) * units
    ok = valid & (variance > 0) & np.isfinite(variance)
    h = np.where(ok, half_width(np.where(ok, variance, 1.0), np.where(ok, r, 1.0), alpha), np.inf)
    llr = np.where(ok, log_likelihood_ratio(estimate, np.where(ok, variance, 1.0), r), -np.inf)
    p = np.minimum.accumulate(np.minimum(1.0, np.exp(-llr)))
    low = np.maximum.accumulate(np.where(ok, estimate - h, -np.inf))
    high = np.minimum.accumulate(np.where(ok, estimate + h, np.inf))
    # An empty intersection can only come from a broken approximation (tiny n, drifting rates):
    # show the current interval rather than a negative-width one.
    empty = low > high
    low = np.where(empty, estimate - h, low)
    high = np.where(empty, estimate + h, high)
    return Path(estimate, variance, np.maximum.accumulate(ok), p, low, high)
