"""CUPED: variance reduction with a covariate fixed before assignment (Deng, Xu, Kohavi &
Walker, "Improving the Sensitivity of Online Controlled Experiments by Utilizing
Pre-Experiment Data", WSDM 2013).

Each observation's value is replaced by ``Y' = Y - theta (X - mean X) N``, where ``X`` is its
unit's covariate (a key's metric before the experiment, or a per-prompt difficulty from an
offline run) and ``theta = Cov(X, Y/N) / Var(X)``, pooled over the arms. Because ``X`` was fixed
before assignment, its mean is the same in every arm and the difference of means is unchanged in
expectation; its variance shrinks by ``1 - rho^2``. ``theta`` is estimated from the data given
(an O(1/n) bias, as in the paper); bench/experiments.py (case ``cuped``) measures what it does to
the always-valid test: A/A false winners and the users needed for 0.30 -> 0.35.

The gateway does not record a covariate yet (nothing in the event log is fixed before
assignment), so ``analyse`` does not call this: it is the measured building block.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gateway.experiments.units import Stream

Array = npt.NDArray[np.float64]


def theta(stream: Stream, covariate: Array) -> float:
    """``Cov(X, Y/N) / Var(X)`` over the observations; 0 when X does not vary."""
    per = stream.y / np.where(stream.n > 0, stream.n, 1.0)
    var = float(np.var(covariate))
    if len(covariate) < 2 or var == 0.0:
        return 0.0
    return float(np.mean((covariate - covariate.mean()) * (per - per.mean())) / var)


def adjust(stream: Stream, covariate: Array) -> Stream:
    """The stream with ``Y' = Y - theta (X - mean X) N``; ``covariate`` is per observation (the
    unit's value, repeated for each of its observations)."""
    t = theta(stream, covariate)
    y = stream.y - t * (covariate - covariate.mean()) * stream.n
    return Stream(stream.unit, stream.arm, y, stream.n)
