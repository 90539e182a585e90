"""From the store's rows to units of analysis: requests by intention to treat, then sticky keys.

Intention to treat: the store holds one event per attempt. A request's attempts share its
``request_id`` (set once per client request by the dispatcher); rows from before that column
are chained instead (attempt 0, then attempts whose ``fallback_from`` names the variant tried
before). The request belongs to the variant it was *assigned* (attempt 0's ``fallback_from``
when that variant was cooling down and skipped, else attempt 0's variant), whatever variant
answered.
Its outcome is its last attempt's (that is the inference id the client got and gives feedback
on). Without it, a variant that fails on hard prompts hands them to the other arm and "wins"
(65% of A/A experiments, EXPERIMENTS.md).

The unit of analysis is the unit of assignment (Deng, Lu & Litz, "Trustworthy analysis of
online A/B tests", WSDM 2017; Deng et al., "Applying the Delta Method in Metric Analytics",
KDD 2018): with a sticky key every request of a key goes to the same arm, so requests are not
independent and per-request variances are too small. Per key ``i`` with sums ``Y_i`` and counts
``N_i``, over the ``U`` keys of an arm::

    R = sum(Y) / sum(N)
    Var(R) = (s_Y^2 - 2 R s_YN + R^2 s_N^2) / (U * mean(N)^2)
           = sum_i (Y_i - R N_i)^2 / sum(N)^2 * U / (U - 1)

The same formula with ``N_i = 1`` is the ordinary variance of a mean, and with ``Y`` = cost and
``N`` = correct answers it is the interval of cost per correct answer.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
#: assignments that come from the randomisation, the only ones compared
RANDOMISED = ("sticky", "random")


@dataclass
class Request:
    """One client request, all its attempts together."""

    root: str
    assigned: str
    reason: str
    unit: str
    ts: float
    ids: list[str] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    latency_ms: float | None = None
    cost: float | None = None

    @property
    def status(self) -> str:
        return str(self.final.get("status") or "error")

    @property
    def answered_by(self) -> str:
        return str(self.final.get("variant"))

    @property
    def id(self) -> str:
        return self.ids[-1]


def requests(events: Sequence[dict[str, Any]]) -> list[Request]:
    """Requests rebuilt from attempt events (live, non-shadow events of one route), by time.

    Attempts with a ``request_id`` are grouped by it: exact, however many look-alike requests
    run at once. Older rows without one are chained: an attempt ``k > 0`` is joined to the
    oldest open request whose last attempt was ``k - 1`` on the variant it names in
    ``fallback_from``, with the same key hash. Two concurrent chains that look alike may swap
    there, which changes nothing when their assigned variants are equal (the common case: they
    differ only when one started cooled).
    """
    out: list[Request] = []
    by_id: dict[str, Request] = {}
    waiting: dict[tuple[Any, str, int], deque[Request]] = defaultdict(deque)
    for event in sorted(events, key=lambda e: (float(e["ts"]), int(e.get("attempt") or 0))):
        attempt = int(event.get("attempt") or 0)
        variant = str(event.get("variant"))
        key = event.get("key_hash")
        request_id = event.get("request_id")
        request: Request | None = None
        if request_id:
            request = by_id.get(str(request_id))
        elif attempt > 0:
            queue = waiting.get((key, str(event.get("fallback_from")), attempt - 1))
            request = queue.popleft() if queue else None
        if request is None:
            # Attempt 0 names the assigned variant in fallback_from when it was skipped; an
            # orphaned later attempt's best guess is the variant it fell back from.
            assigned = str(event.get("fallback_from") or variant)
            request = Request(
                root=str(event["id"]),
                assigned=assigned,
                reason=str(event.get("assignment") or "random"),
                unit=str(key) if key else f"request:{event['id']}",
                ts=float(event["ts"]),
            )
            out.append(request)
            if request_id:
                by_id[str(request_id)] = request
        request.ids.append(str(event["id"]))
        request.final = event
        if event.get("latency_ms") is not None:
            request.latency_ms = (request.latency_ms or 0.0) + float(event["latency_ms"])
        if event.get("cost") is not None:
            request.cost = (request.cost or 0.0) + float(event["cost"])
        if event.get("status") == "error" and not request_id:
            waiting[(key, variant, attempt)].append(request)
    return out


@dataclass(frozen=True)
class Stream:
    """Observations of one metric in time order: the unit, the arm, a numerator and a count."""

    unit: npt.NDArray[np.int64]
    arm: npt.NDArray[np.int64]
    y: Array
    n: Array


@dataclass(frozen=True)
class RatioPath:
    """Per arm (rows) and per look (columns): the ratio, its variance, and the units seen."""

    ratio: Array
    variance: Array
    units: Array


def ratio_path(stream: Stream, arms: int) -> RatioPath:
    """The delta-method ratio of every arm after every observation, vectorised.

    Running sums over units of ``Y_i^2``, ``N_i^2`` and ``Y_i N_i`` grow by
    ``(Y + y)^2 - Y^2`` and so on, where ``Y`` is the unit's sum before the observation.
    Values so large that their squares overflow (a float metric of 1e300) give an infinite or
    undefined variance, which every reader takes as "no interval yet", not an error.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _ratio_path(stream, arms)


def _ratio_path(stream: Stream, arms: int) -> RatioPath:
    t = len(stream.y)
    if t == 0:
        empty = np.zeros((arms, 0))
        return RatioPath(empty, empty, empty)
    order = np.argsort(stream.unit, kind="stable")
    units_sorted = stream.unit[order]
    starts = np.r_[True, units_sorted[1:] != units_sorted[:-1]]
    group = np.cumsum(starts) - 1
    prev_y = np.empty(t)
    prev_n = np.empty(t)
    for values, prev in ((stream.y, prev_y), (stream.n, prev_n)):
        sorted_values = values[order]
        running = np.cumsum(sorted_values)
        offsets = (running - sorted_values)[starts]
        prev[order] = running - sorted_values - offsets[group]
    first = np.zeros(t, dtype=bool)
    first[order[starts]] = True
    y, n = stream.y, stream.n
    d_yy = 2 * prev_y * y + y * y
    d_nn = 2 * prev_n * n + n * n
    d_yn = prev_y * n + prev_n * y + y * n
    ratio = np.full((arms, t), np.nan)
    variance = np.full((arms, t), np.nan)
    count = np.zeros((arms, t))
    for a in range(arms):
        mask = (stream.arm == a).astype(float)
        sy, sn = np.cumsum(y * mask), np.cumsum(n * mask)
        syy, snn, syn = np.cumsum(d_yy * mask), np.cumsum(d_nn * mask), np.cumsum(d_yn * mask)
        u = np.cumsum(first * mask)
        r = sy / sn
        resid = syy - 2 * r * syn + r * r * snn
        var = np.maximum(resid, 0.0) / (sn * sn) * u / (u - 1)
        ratio[a] = np.where(sn > 0, r, np.nan)
        variance[a] = np.where((sn > 0) & (u > 1), var, np.nan)
        count[a] = u
    return RatioPath(ratio, variance, count)


def codes(values: Sequence[str]) -> tuple[npt.NDArray[np.int64], list[str]]:
    """Integer codes for labels, in order of first appearance."""
    index: dict[str, int] = {}
    out = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64)
    return out, list(index)
