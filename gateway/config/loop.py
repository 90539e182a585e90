"""The specs that close the loop from prompting to tuning: capture and cascades (issue #15).

Kept apart from ``routes.py`` (which imports them) so that module stays one screenful per
section. A route's ``capture`` stores a sample of its traffic's text (user content at rest);
a variant's ``cascade`` runs other variants of its route in order until one is confident.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from gateway.config.base import Spec

#: the pipeline name a cascade variant gets: it has no prompt of its own, its steps do
CASCADE_PIPELINE = "cascade"


class CaptureSpec(Spec):
    """Store a sample of a route's requests' messages and responses' text with their events.

    Off unless a route has this section. What is stored is user content at rest: the
    redaction rules run before anything is written (queue, spool or database).
    """

    sample_rate: float = Field(gt=0, le=1, description="share of requests captured")
    retention_days: float = Field(default=30, gt=0, description="older captures are deleted")
    redact: list[str] = Field(
        default_factory=list,
        description="regular expressions; every match is replaced by [REDACTED] before writing",
    )

    @field_validator("redact")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"redact: '{pattern}' is not a regular expression: {exc}"
                ) from None
            if compiled.fullmatch(""):
                # An empty match would insert the marker between every character.
                raise ValueError(f"redact: '{pattern}' matches the empty string; make it stricter")
        return patterns


class AcceptSpec(Spec):
    """When a cascade step's answer is good enough to return: one rule on its confidence."""

    vote_share: float | None = Field(
        default=None, ge=0, le=1, description="voting pipelines: the winner's share of the votes"
    )
    answer_prob: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="single calls: the probability of the answer letter (engine logprobs)",
    )

    @model_validator(mode="after")
    def _one_rule(self) -> AcceptSpec:
        if (self.vote_share is None) == (self.answer_prob is None):
            raise ValueError("accept: set exactly one of 'vote_share' or 'answer_prob'")
        return self

    @property
    def kind(self) -> str:
        return "vote_share" if self.vote_share is not None else "answer_prob"

    @property
    def threshold(self) -> float:
        value = self.vote_share if self.vote_share is not None else self.answer_prob
        assert value is not None
        return value


class CascadeStepSpec(Spec):
    """One step of a cascade: a variant of the same route, and when its answer is accepted."""

    variant: str
    accept: AcceptSpec | None = Field(
        default=None, description="every step but the last needs one; the last always answers"
    )


def check_cascade(steps: list[CascadeStepSpec]) -> list[CascadeStepSpec]:
    """What needs only the steps themselves (the variants they name: gateway.resolve)."""
    if len(steps) < 2:
        raise ValueError("cascade: give at least two steps (the cheap one, then the fallback)")
    for index, step in enumerate(steps[:-1]):
        if step.accept is None:
            raise ValueError(f"cascade[{index}]: every step but the last needs 'accept'")
    if steps[-1].accept is not None:
        raise ValueError("cascade: the last step always answers; remove its 'accept'")
    names = [s.variant for s in steps]
    if len(set(names)) != len(names):
        raise ValueError("cascade: a variant appears twice")
    return steps


def fill_cascade_targets(data: object) -> object:
    """A route's raw ``variants``: each cascade variant gets its last step's target and the
    ``cascade`` pipeline, so the rest of the gateway (events, metrics, evaluation) sees a
    variant like any other. Users never write a cascade's target or pipeline."""
    if not isinstance(data, dict) or not isinstance(data.get("variants"), dict):
        return data
    variants = dict(data["variants"])
    for name, raw in variants.items():
        if not isinstance(raw, dict) or raw.get("cascade") is None:
            continue
        # A dumped config (its cascades filled in, pipeline 'cascade') reads back as it was.
        if raw.get("pipeline", CASCADE_PIPELINE) != CASCADE_PIPELINE or (
            "target" in raw and "pipeline" not in raw
        ):
            raise ValueError(
                f"variants.{name}: a cascade has no 'target' or 'pipeline' of its own (its "
                "steps' variants have them); remove them"
            )
        steps = raw.get("cascade")
        last = steps[-1] if isinstance(steps, list) and steps else None
        named = variants.get(last.get("variant")) if isinstance(last, dict) else None
        target = named.get("target") if isinstance(named, dict) else None
        # A step naming no variant is reported by gateway.resolve; "" keeps parsing going.
        variants[name] = {**raw, "target": target or "", "pipeline": CASCADE_PIPELINE}
    return {**data, "variants": variants}
