"""Where an evaluation's calls run: in this process, or on a running gateway (``--url``).

Both run a variant through ``Dispatcher.run_variant``, the code path of live traffic, which logs
each call in the event log as an ``offline`` event with the run's id. The gateway's side of
``--url`` (``gateway/api/evaluations.py``) calls the same ``call_variant`` as the in-process
backend, so the two modes produce the same records.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

import httpx

from gateway.admission.limits import check_limits, validate_request
from gateway.config.loop import CascadeStepSpec
from gateway.config.routes import RouteSpec
from gateway.errors import BackendError, GatewayError, NotFoundError
from gateway.evaluation.learned import VariantLearned, variant_learned
from gateway.events.log import EventLog
from gateway.events.schema import FeedbackRow
from gateway.experiments.analysis import OFFLINE_METRIC
from gateway.pipelines.responses import content_of
from gateway.state import GatewayState

#: the longest reply kept in a result record (the rest is cut; the event log has the figures)
MAX_REPLY_CHARS = 4000


@dataclass(frozen=True)
class VariantInfo:
    name: str
    target: str
    pipeline: str
    params: dict[str, Any] = field(default_factory=dict)
    #: the content ids its adapter was trained on and its bank prompts with (not fingerprinted:
    #: a retrained adapter changes its weights, which the run cannot see either)
    learned: VariantLearned = field(default_factory=VariantLearned)
    #: a cascade's steps: each one's variant, acceptance rule and fingerprint
    cascade: list[dict[str, Any]] | None = None

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between a run and its resumption; a cascade's answers also
        hang on its steps' rules and settings."""
        found = {"target": self.target, "pipeline": self.pipeline, "params": self.params}
        return found if self.cascade is None else {**found, "cascade": self.cascade}

    def described(self) -> dict[str, Any]:
        """The fingerprint and what the variant learned from, as the evaluation API sends it."""
        learned = {"ids": sorted(self.learned.ids), "notes": list(self.learned.notes)}
        return {**self.fingerprint(), "learned": learned}


@dataclass
class Outcome:
    """One call of one variant, as the event log saw it."""

    status: Literal["ok", "error"]
    inference_id: str | None = None
    reply: str = ""
    #: the answer letter the pipeline extracted (multiple-choice requests), if any
    answer: str | None = None
    votes: dict[str, int] | None = None
    calls: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    cost: float | None = None
    error_code: str | None = None
    error: str | None = None
    #: a cascade's steps as its event keeps them (routing/cascade.py), for calibration.py
    steps: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        known: dict[str, Any] = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


class Backend(Protocol):
    async def variants(self, route: str) -> dict[str, VariantInfo]: ...

    async def call(
        self, route: str, variant: str, body: dict[str, Any], run_id: str
    ) -> Outcome: ...

    async def score(self, run_id: str, inference_id: str, correct: bool) -> None: ...


# -- the gateway's side (shared by the in-process backend and the HTTP API) ---------------------


def route_variants(state: GatewayState, route: str) -> dict[str, VariantInfo]:
    found = state.router.get(route)
    if found is None:
        raise NotFoundError(
            f"No route named '{route}'; routes: {', '.join(state.router.routes) or 'none'}.",
            param="route",
            code="route_not_found",
        )
    registry, pipelines = state.adapters.registry, state.runner.pipelines
    learned = {
        name: variant_learned(v.target, v.pipeline, registry, pipelines)
        for name, v in found.spec.variants.items()
    }
    return variant_infos(found.spec, learned)


def variant_infos(
    spec: RouteSpec, learned: Mapping[str, VariantLearned] | None = None
) -> dict[str, VariantInfo]:
    """A route's variants as configured (what a run fingerprints), with what each learned;
    a cascade has learned what any of its steps learned (config checks its steps are plain
    variants of the route)."""
    learned = learned or {}
    infos = {
        name: VariantInfo(
            name,
            v.target,
            v.pipeline,
            v.params.model_dump(mode="json", exclude_none=True),
            learned.get(name, VariantLearned()),
        )
        for name, v in spec.variants.items()
    }
    for name, v in spec.variants.items():
        if v.cascade is not None:
            infos[name] = _cascade_info(infos[name], v.cascade, infos)
    return infos


def _cascade_info(
    info: VariantInfo, spec: list[CascadeStepSpec], infos: Mapping[str, VariantInfo]
) -> VariantInfo:
    steps = [infos[step.variant] for step in spec]
    everyone = (info, *steps)
    learned = VariantLearned(
        frozenset().union(*(i.learned.ids for i in everyone)),
        tuple(dict.fromkeys(note for i in everyone for note in i.learned.notes)),
    )
    described = []
    for step, step_info in zip(spec, steps, strict=True):
        rule = step.accept.model_dump(exclude_none=True) if step.accept is not None else None
        described.append(
            {"variant": step.variant, "accept": rule, "settings": step_info.fingerprint()}
        )
    return replace(info, learned=learned, cascade=described)


async def call_variant(
    state: GatewayState, route: str, variant: str, body: dict[str, Any], run_id: str
) -> Outcome:
    """Run one item's request on one variant. A failing call is an ``error`` outcome."""
    if variant not in route_variants(state, route):
        raise NotFoundError(
            f"Route '{route}' has no variant '{variant}'.", param="variant", code="not_found"
        )
    started = time.perf_counter()
    try:
        chat = validate_request(body)
        check_limits(chat, state.config.limits)
        result, event = await state.dispatcher.run_variant(
            route, variant, chat, body, run_id=run_id
        )
    except GatewayError as exc:
        return Outcome(
            "error",
            latency_ms=(time.perf_counter() - started) * 1000,
            error_code=exc.code or type(exc).__name__,
            error=exc.message,
        )
    return Outcome(
        "ok",
        inference_id=event.id,
        reply=content_of(result.response)[:MAX_REPLY_CHARS],
        answer=result.answer,
        votes=dict(result.votes) or None,
        calls=event.calls,
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        latency_ms=event.latency_ms,
        cost=event.cost,
        steps=event.steps,
    )


async def record_score(events: EventLog, inference_id: str, correct: bool) -> None:
    """The score as feedback on the offline event, so the event log's report can show it."""
    await events.add_feedback(
        FeedbackRow.new(
            inference_id=inference_id,
            name=OFFLINE_METRIC,
            kind="boolean",
            value=float(correct),
            text=None,
        )
    )


# -- the two backends ---------------------------------------------------------------------------


class InProcessBackend:
    """Calls the dispatcher of an app running in this process (its lifespan entered)."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state

    async def variants(self, route: str) -> dict[str, VariantInfo]:
        try:
            return route_variants(self.state, route)
        except NotFoundError as exc:
            raise BackendError(exc.message) from None

    async def call(self, route: str, variant: str, body: dict[str, Any], run_id: str) -> Outcome:
        return await call_variant(self.state, route, variant, body, run_id)

    async def score(self, run_id: str, inference_id: str, correct: bool) -> None:
        await record_score(self.state.events, inference_id, correct)


class HttpBackend:
    """Calls a running gateway's evaluation API (``gateway eval --url``)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def variants(self, route: str) -> dict[str, VariantInfo]:
        data = await self._request("GET", f"/v1/evaluations/routes/{route}")
        return {
            name: VariantInfo(
                name,
                v["target"],
                v["pipeline"],
                v.get("params") or {},
                _learned(v.get("learned")),
                v.get("cascade"),
            )
            for name, v in data["variants"].items()
        }

    async def call(self, route: str, variant: str, body: dict[str, Any], run_id: str) -> Outcome:
        payload = {"route": route, "variant": variant, "run_id": run_id, "request": body}
        return Outcome.from_json(await self._request("POST", "/v1/evaluations/calls", payload))

    async def score(self, run_id: str, inference_id: str, correct: bool) -> None:
        payload = {"run_id": run_id, "inference_id": inference_id, "correct": correct}
        await self._request("POST", "/v1/evaluations/scores", payload)

    async def _request(
        self, method: str, path: str, payload: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        try:
            resp = await self.client.request(method, path, json=payload)
        except httpx.HTTPError as exc:
            raise BackendError(
                f"cannot reach the gateway at {self.client.base_url}: {exc}"
            ) from exc
        try:
            data = resp.json()
        except ValueError:
            data = {}
        if resp.status_code >= 400:
            message = (data.get("error") or {}).get("message") if isinstance(data, dict) else None
            raise BackendError(
                f"the gateway at {self.client.base_url} answered {resp.status_code} to "
                f"{method} {path}: {message or resp.text[:300]}"
            )
        if not isinstance(data, dict):
            raise BackendError(f"the gateway answered {method} {path} with no JSON object")
        return data


def _learned(data: Any) -> VariantLearned:
    """The evaluation API's ``learned`` object; a gateway too old to send one knows nothing."""
    if not isinstance(data, dict):
        return VariantLearned(notes=("the gateway does not say what its variants learned from",))
    ids = [i for i in data.get("ids") or [] if isinstance(i, str)]
    notes = [n for n in data.get("notes") or [] if isinstance(n, str)]
    return VariantLearned(frozenset(ids), tuple(notes))
