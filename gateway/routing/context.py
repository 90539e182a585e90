"""One client request across its attempts."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class RequestContext:
    """One client request across its attempts: its deadline and the tokens it used."""

    #: the event loop's clock (``loop.time()``) when the whole request must be done
    deadline: float
    #: prompt and completion tokens of every attempt, for the per-key token rate limit
    tokens: int = 0

    def remaining_s(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()
