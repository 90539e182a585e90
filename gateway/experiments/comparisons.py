"""The tests the decision is made from: differences between arms, multiplicity, sample ratio.

- ``difference``: the always-valid path of ``R_b - R_a`` (``sequential.sequence``) from two
  arms' delta-method paths, ``W = Var(R_a) + Var(R_b)``.
- ``fixed_difference``: the one-look z-test and 95% interval, for an experiment that declared
  ``planned_samples`` and reached it.
- ``holm``: Holm's step-down adjustment (Holm, "A simple sequentially rejective multiple test
  procedure", Scand. J. Stat. 1979): reject while ``p_(i) <= alpha / (m - i + 1)``. Applied to
  always-valid p-values it still controls the family-wise error at any stopping time: a true
  null is first rejected only when the smallest true-null p is below ``alpha / m0``.
- ``sample_ratio``: the sequential sample-ratio test of Lindon & Malek ("Anytime-valid
  inference for multinomial count data", NeurIPS 2022): the Dirichlet-multinomial Bayes factor
  against the configured weights ``p``, with prior ``a = A * p``::

      BF_n = Gamma(sum a) / Gamma(sum a + n) * prod Gamma(a_i + x_i) / Gamma(a_i) / prod p_i^x_i

  is a nonnegative martingale under the null, so ``p = min(1, 1 / max BF)`` is safe to read
  after every assignment (Ville's inequality).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from gateway.experiments.sequential import Path, sequence
from gateway.experiments.units import RatioPath

Array = npt.NDArray[np.float64]
#: the sample-ratio test's threshold: a false alarm at most 1 time in 1,000, however often read
SRM_ALPHA = 0.001
#: the Dirichlet prior's total concentration (Lindon & Malek use a few hundred)
SRM_CONCENTRATION = 100.0


def difference(
    path: RatioPath, a: int, b: int, *, alpha: float, n_star: float, burn_in: int
) -> Path:
    """The always-valid path of arm ``b`` minus arm ``a``."""
    w = path.variance[a] + path.variance[b]
    d = path.ratio[b] - path.ratio[a]
    per_unit = path.variance[a] * path.units[a] + path.variance[b] * path.units[b]
    ok = (path.units[a] >= burn_in) & (path.units[b] >= burn_in) & np.isfinite(w) & (w > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        units = np.where(ok, per_unit / np.where(ok, w, 1.0), 0.0)
    return sequence(
        np.where(ok, d, 0.0), np.where(ok, w, 0.0), units, alpha=alpha, n_star=n_star, valid=ok
    )


def fixed_difference(d: float, w: float, alpha: float) -> tuple[float, float, float]:
    """(p-value, low, high) of the one-look z-test of ``d`` with variance ``w``."""
    if w <= 0:
        return (1.0 if d == 0 else 0.0), d, d
    z = float(stats.norm.ppf(1 - alpha / 2))
    se = math.sqrt(w)
    return float(2 * stats.norm.sf(abs(d) / se)), d - z * se, d + z * se


def sample_ratio_path(arms: npt.NDArray[np.int64], weights: Sequence[float]) -> Array:
    """The always-valid sample-ratio p-value after each first assignment (``arms`` in order)."""
    k = len(weights)
    if len(arms) == 0:
        return np.ones(0)
    p = np.asarray(weights, dtype=float) / float(sum(weights))
    prior = SRM_CONCENTRATION * p
    counts = np.cumsum(np.eye(k)[arms], axis=0)
    n = counts.sum(axis=1)
    log_bf = (
        special.gammaln(prior.sum())
        - special.gammaln(prior.sum() + n)
        + (special.gammaln(prior + counts) - special.gammaln(prior)).sum(axis=1)
        - (counts * np.log(p)).sum(axis=1)
    )
    result: Array = np.minimum.accumulate(np.minimum(1.0, np.exp(-log_bf)))
    return result
