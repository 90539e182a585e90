"""Settings for running more than one gateway process or engine replica (README "Scaling out").

``state``: where the limits, cooldowns and retry budget live (in this process, or in Redis so
that every gateway process shares them). ``balance``: how a vLLM model's replicas share its
traffic. Kept apart from ``schema.py`` so the scale-out settings read in one place.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from gateway.config.base import Spec


class StateSpec(Spec):
    """Shared state: without ``url`` each process keeps its own (as a single gateway does)."""

    url: str | None = Field(
        default=None, description="redis://HOST:PORT/DB (or rediss://); unset: in process"
    )
    on_unavailable: Literal["open", "closed"] = Field(
        default="open",
        description="Redis down: 'open' falls back to this process's own limits, 'closed' "
        "refuses rate-limited requests with 503 and retries nothing",
    )
    timeout_s: float = Field(default=0.25, gt=0, le=10, description="one Redis call")
    prefix: str = Field(default="switchboard:", max_length=64, description="key prefix")
    sync_interval_s: float = Field(
        default=0.5, gt=0, le=10, description="how often cooldowns and the budget sync"
    )

    @field_validator("url")
    @classmethod
    def _redis_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"'{url}' is not a redis:// URL")
        return url


class BalanceSpec(Spec):
    """How one model's replicas (several ``urls``, or ``launch.replicas``) share requests."""

    strategy: Literal["least_outstanding", "round_robin"] = "least_outstanding"
    eject_s: float = Field(
        default=2.0, gt=0, description="first ejection of a failed replica; doubles after"
    )
    max_eject_s: float = Field(default=60.0, gt=0)
    health_interval_s: float = Field(
        default=2.0, gt=0, description="active checks of each replica's /health"
    )
    sticky: Literal["none", "user"] = Field(
        default="none",
        description="'user': requests with one 'user' go to one replica (its prefix cache); "
        "the members of one pipeline request always share a replica",
    )
    affinity_slack: int = Field(
        default=8,
        ge=0,
        description="an affine replica is left for the least loaded one when it has this "
        "many more requests in flight",
    )
