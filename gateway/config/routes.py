"""``routes:`` in gateway.yaml: variants with their weights and sampling, shadows, fallbacks,
cascades, capture, and the experiment that compares the variants (metrics, guardrails, the
decision rule and the actions it may take)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from gateway.config.base import Spec
from gateway.config.loop import (
    CASCADE_PIPELINE,
    CaptureSpec,
    CascadeStepSpec,
    check_cascade,
    fill_cascade_targets,
)


class SamplingSpec(Spec):
    """A variant's sampling settings; they override what the client sent."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stop: list[str] | None = Field(default=None, max_length=4)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)


class VariantSpec(Spec):
    """A model or adapter, a pipeline and sampling settings, with a share of the traffic."""

    target: str = Field(description="a model id or an adapter name (a cascade: filled in)")
    pipeline: str = "plain"
    weight: float = Field(
        default=0.0,
        ge=0,
        le=1e6,
        allow_inf_nan=False,
        description="relative share; 0: only pinned, shadow or fallback",
    )
    params: SamplingSpec = Field(default_factory=SamplingSpec)
    cascade: list[CascadeStepSpec] | None = Field(
        default=None, description="steps (variants of the route) tried in order: config/loop.py"
    )

    @model_validator(mode="after")
    def _cascade(self) -> VariantSpec:
        if self.cascade is not None:
            check_cascade(self.cascade)
        elif self.pipeline == CASCADE_PIPELINE:
            raise ValueError(f"pipeline: '{CASCADE_PIPELINE}' is reserved; write 'cascade: [...]'")
        return self


class ShadowSpec(Spec):
    variant: str
    sample_rate: float = Field(gt=0, le=1)


class MetricSpec(Spec):
    type: Literal["boolean", "float"]
    higher_is_better: bool = True


class GuardrailSpec(Spec):
    """A metric no variant may make worse than the control by more than ``margin``.

    Built in: error_rate, latency_p95 (ms), cost (per request); or any feedback metric. The
    margin is in the metric's own units (0.02 = two points of error rate, 200 = 200 ms).
    """

    margin: float = Field(default=0.0, ge=0)


class ExperimentSpec(Spec):
    """How a route's experiment is analysed and decided (gateway/experiments/)."""

    metrics: dict[str, MetricSpec] = Field(default_factory=dict)
    primary: str | None = Field(default=None, description="the deciding metric; default: first")
    min_samples: int = Field(
        default=100,
        ge=2,
        description="units per variant before any decision: the always-valid interval's "
        "normal approximation holds from here (coverage measured in docs/experiments.md)",
    )
    alpha: float = Field(default=0.05, gt=0, lt=1)
    control: str | None = Field(default=None, description="default: the first variant")
    min_effect: float | None = Field(
        default=None,
        gt=0,
        description="the smallest difference worth finding on the primary metric: the report "
        "shows the sample it needs, and 'no_difference' once the interval rules it out",
    )
    planned_samples: int | None = Field(
        default=None,
        ge=2,
        description="units per variant for a one-look fixed-horizon test; without it the "
        "always-valid test is used, safe to read at any time",
    )
    expected_samples: int = Field(
        default=1000, ge=10, description="units per variant where the always-valid test is tightest"
    )
    guardrails: dict[str, GuardrailSpec] = Field(default_factory=dict)
    # Acted on when the decision is evaluated (GET /v1/experiments/{route}, gateway report):
    # gateway/experiments/promotion.py.
    on_decision: Literal["report", "promote"] = Field(
        default="report", description="promote: a winner gets all traffic, automatically"
    )
    on_guardrail_breach: Literal["report", "rollback"] = Field(
        default="report",
        description="rollback: a breach sends all traffic to the control (routing has no "
        "per-variant redirect)",
    )


STICKY_KEY = re.compile(r"^(user|none|header:[A-Za-z0-9-]+)$")


class RouteSpec(Spec):
    """A public model name whose traffic is split between variants."""

    variants: dict[str, VariantSpec] = Field(min_length=1)
    sticky_key: str = Field(default="user", description="user | header:NAME | none")
    salt: str | None = Field(default=None, description="hash salt; default: the route name")
    allow_pin: bool = False
    shadow: list[ShadowSpec] = Field(default_factory=list)
    fallback: list[str] = Field(default_factory=list)
    experiment: ExperimentSpec | None = None
    capture: CaptureSpec | None = Field(default=None, description="off by default: config/loop.py")

    _fill_cascades = model_validator(mode="before")(fill_cascade_targets)

    @model_validator(mode="after")
    def _references(self) -> RouteSpec:
        if not STICKY_KEY.fullmatch(self.sticky_key):
            raise ValueError(
                f"sticky_key '{self.sticky_key}' must be 'user', 'none' or 'header:NAME'"
            )
        if sum(v.weight for v in self.variants.values()) <= 0:
            raise ValueError("variants: at least one variant needs a weight above 0")
        # Shadows, fallbacks and the control name variants: gateway.resolve checks them.
        return self
