"""Cascades: run a route's variants in order, return the first answer confident enough.

A cascade variant (``cascade: [{variant: tuned, accept: {vote_share: 0.8}}, {variant:
prompted}]``) is a variant like any other to routing, experiments and evaluation; only where a
variant is run does the dispatcher hand it to its ``Cascade`` instead of the pipeline runner.
Each step runs its variant by the same path (its target, pipeline and params); a step is
accepted when its confidence reaches its rule: ``vote_share`` (the winner's share of a voting
pipeline's votes) or ``answer_prob`` (the engine's probability of the answer letter, from the
logprobs this step asks vLLM for). The last step always answers. The result carries every
step's calls, tokens and cost, which the event keeps (``steps``, ``cascade_step``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config.loop import CASCADE_PIPELINE, AcceptSpec
from gateway.config.schema import GatewayConfig
from gateway.engines.target import Target
from gateway.pipelines.answers import extract_answer
from gateway.pipelines.loader import Pipeline
from gateway.pipelines.parse import question_of
from gateway.pipelines.responses import completion_as_sse, content_of
from gateway.protocol import ChatCompletionRequest
from gateway.routing.assignment import Router, Variant
from gateway.routing.context import PipelineResultLike

#: one step's run: the dispatcher's run of one variant
RunStep = Callable[[Variant, ChatCompletionRequest, dict[str, Any]], Awaitable[PipelineResultLike]]
#: a step's cost from its variant and usage (None: the model has no pricing)
Price = Callable[[Variant, Mapping[str, int]], float | None]
#: alternatives asked for at each token: enough to sum " B" and "B" at the answer's position
TOP_LOGPROBS = 5


@dataclass
class CascadeResult:
    """What the event log keeps of a cascade: the answering step's reply, every step's costs."""

    response: dict[str, Any]
    answer: str | None
    votes: dict[str, int]
    calls: int
    usage: dict[str, int]
    cost: float | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    cascade_step: int = 0


class Cascade:
    """One cascade variant: its steps in order, each with its acceptance rule."""

    def __init__(
        self, variant: Variant, steps: list[tuple[Variant, AcceptSpec | None]], run: RunStep,
        price: Price,
    ) -> None:  # fmt: skip
        self.variant = variant
        self.steps = steps
        self.run = run
        self.price = price

    async def complete(
        self, pipeline: str, target: Target, body: dict[str, Any], chat: ChatCompletionRequest
    ) -> CascadeResult:
        """Runs the steps until one is accepted (``pipeline`` and ``target`` are the cascade
        variant's placeholders: each step has its own)."""
        records: list[dict[str, Any]] = []
        results: list[PipelineResultLike] = []
        for index, (variant, accept) in enumerate(self.steps):
            wants_logprobs = accept is not None and accept.answer_prob is not None
            step_body = (
                {**body, "logprobs": True, "top_logprobs": TOP_LOGPROBS} if wants_logprobs else body
            )
            result = await self.run(variant, chat, step_body)
            answer = result.answer if result.answer is not None else _read(result, chat)
            confidence = step_confidence(result, answer, accept)
            last = index == len(self.steps) - 1
            accepted = last or (
                accept is not None and confidence is not None and confidence >= accept.threshold
            )
            records.append(
                _record(variant, accept, answer, confidence, accepted, result, self.price)
            )
            results.append(result)
            if accepted:
                break
        chosen = results[-1]
        response = _answer_response(chosen, records, bool(body.get("logprobs")))
        usage = _sum_usage(r.usage for r in results)
        costs = [r["cost"] for r in records]
        return CascadeResult(
            response=response,
            answer=records[-1]["answer"],
            votes=dict(chosen.votes),
            calls=sum(r.calls for r in results),
            usage=usage,
            cost=None if all(c is None for c in costs) else sum(c or 0.0 for c in costs),
            steps=records,
            cascade_step=len(records) - 1,
        )

    async def stream(
        self,
        pipeline: str,
        target: Target,
        body: dict[str, Any],
        chat: ChatCompletionRequest,
        *,
        on_result: Callable[[PipelineResultLike], None] | None = None,
    ) -> AsyncIterator[bytes]:
        """A cascade decides after each step, so it streams its answer once it has one."""
        result = await self.complete(pipeline, target, body, chat)
        if on_result is not None:
            on_result(result)
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
        for event in completion_as_sse(result.response, include_usage=include_usage):
            yield event


class Cascades:
    """Every cascade variant of every route, found by the variant object routing hands out."""

    def __init__(self, router: Router, run: RunStep, price: Price) -> None:
        self._by_variant: dict[int, tuple[Variant, Cascade]] = {}
        for route in router.routes.values():
            for name, spec in route.spec.variants.items():
                if spec.cascade is None:
                    continue
                variant = route.variants[name]
                steps = [(route.variants[s.variant], s.accept) for s in spec.cascade]
                self._by_variant[id(variant)] = (variant, Cascade(variant, steps, run, price))

    def get(self, variant: Variant) -> Cascade | None:
        if variant.pipeline != CASCADE_PIPELINE:
            return None
        found = self._by_variant.get(id(variant))
        return found[1] if found is not None and found[0] is variant else None


# -- confidence ---------------------------------------------------------------------------------


def step_confidence(
    result: PipelineResultLike, answer: str | None, accept: AcceptSpec | None
) -> float | None:
    """The step's confidence in the way its rule reads it (the last step: the vote share, or
    the letter's probability when it has one)."""
    if answer is None:
        return None
    if accept is not None and accept.answer_prob is not None:
        return answer_prob(result.response, answer)
    cast = sum(result.votes.values())
    if cast:
        return round(result.votes.get(answer, 0) / cast, 4)
    return answer_prob(result.response, answer)


def answer_prob(response: Mapping[str, Any], letter: str) -> float | None:
    """The probability of ``letter`` at the token that states the answer.

    The answer's position is where the pipelines' extraction reads it ("Answer: C": the C);
    the probability sums the alternatives at that token that read as the same letter (" C" and
    "C" are different tokens). None without logprobs, or when the tokens do not spell the text.
    """
    choices = response.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], Mapping) else {}
    logprobs = choice.get("logprobs") if isinstance(choice, Mapping) else None
    tokens = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if not isinstance(tokens, list) or not tokens:
        return None
    text = "".join(str(t.get("token", "")) for t in tokens if isinstance(t, Mapping))
    letters = {letter: letter}
    found = extract_answer(text, letters)
    offset = 0
    for entry in tokens:
        if not isinstance(entry, Mapping):
            return None
        token = str(entry.get("token", ""))
        end = offset + len(token)
        if (found is not None and offset <= found.start < end) or (
            found is None and _letter(token) == letter
        ):
            if _letter(token) != letter:
                return None
            probs = {
                str(alt.get("token")): float(alt.get("logprob", -math.inf))
                for alt in entry.get("top_logprobs") or []
                if isinstance(alt, Mapping)
            }
            probs.setdefault(token, float(entry.get("logprob", -math.inf)))
            total = sum(math.exp(lp) for tok, lp in probs.items() if _letter(tok) == letter)
            return round(min(1.0, total), 4)
        offset = end
    return None


def _letter(token: str) -> str:
    return token.strip().strip("().:*[]").upper()


def _read(result: PipelineResultLike, chat: ChatCompletionRequest) -> str | None:
    question = question_of(chat)
    if question is None:
        return None
    found = extract_answer(content_of(result.response), question.options)
    return found.letter if found else None


# -- the result ---------------------------------------------------------------------------------


def _record(
    variant: Variant,
    accept: AcceptSpec | None,
    answer: str | None,
    confidence: float | None,
    accepted: bool,
    result: PipelineResultLike,
    price: Price,
) -> dict[str, Any]:
    return {
        "variant": variant.name,
        "target": variant.target,
        "pipeline": variant.pipeline,
        "rule": {accept.kind: accept.threshold} if accept is not None else None,
        "answer": answer,
        "confidence": confidence,
        "accepted": accepted,
        "calls": result.calls,
        "prompt_tokens": result.usage.get("prompt_tokens"),
        "completion_tokens": result.usage.get("completion_tokens"),
        "cost": price(variant, result.usage),
    }


def _answer_response(
    chosen: PipelineResultLike, records: list[dict[str, Any]], asked_logprobs: bool
) -> dict[str, Any]:
    """The answering step's reply, with the cascade's account in its ``switchboard`` object;
    logprobs the cascade asked for itself are not the client's, so they are dropped."""
    response = copy.copy(chosen.response)
    if not asked_logprobs:
        response["choices"] = [
            {k: v for k, v in c.items() if k != "logprobs"} if isinstance(c, dict) else c
            for c in response.get("choices") or []
        ]
    extension = dict(response.get("switchboard") or {})
    extension["cascade"] = {
        "step": len(records) - 1,
        "variant": records[-1]["variant"],
        "escalated": len(records) > 1,
        "steps": records,
    }
    response["switchboard"] = extension
    return response


def _sum_usage(usages: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for usage in usages:
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            value = usage.get(key)
            if isinstance(value, int):
                total[key] = total.get(key, 0) + value
    return total


# -- the config check (gateway.resolve) ---------------------------------------------------------


def cascade_problems(config: GatewayConfig, pipelines: Mapping[str, Pipeline]) -> list[str]:
    """Each step names another, non-cascade variant of the route, and its rule fits the step's
    pipeline: ``vote_share`` needs a voting pipeline, ``answer_prob`` a single call."""
    problems = []
    for route, spec in config.routes.items():
        for name, variant in spec.variants.items():
            for index, step in enumerate(variant.cascade or []):
                key = f"routes.{route}.variants.{name}.cascade[{index}]"
                named = spec.variants.get(step.variant)
                if named is None or step.variant == name:
                    others = ", ".join(v for v in spec.variants if v != name)
                    problems.append(
                        f"{key}.variant: '{step.variant}' is not another variant of this route. "
                        f"Fix: use one of {others}."
                    )
                    continue
                if named.cascade is not None:
                    problems.append(
                        f"{key}.variant: '{step.variant}' is itself a cascade. Fix: list its "
                        "steps here instead."
                    )
                    continue
                pipeline = pipelines.get(named.pipeline)
                if step.accept is None or pipeline is None:
                    continue  # an unknown pipeline is reported once, by route_problems
                votes = _votes(pipeline)
                if step.accept.vote_share is not None and not votes:
                    problems.append(
                        f"{key}.accept.vote_share: the pipeline '{named.pipeline}' of "
                        f"'{step.variant}' makes one call and casts no votes. Fix: use "
                        "answer_prob, or a voting pipeline (an ensemble of k > 1)."
                    )
                if step.accept.answer_prob is not None and votes:
                    problems.append(
                        f"{key}.accept.answer_prob: the pipeline '{named.pipeline}' of "
                        f"'{step.variant}' votes over several calls. Fix: use vote_share."
                    )
    return problems


def _votes(pipeline: Pipeline) -> bool:
    """Whether the pipeline answers by a vote of several members."""
    if pipeline.passthrough:
        return False
    ensemble = pipeline.spec.ensemble
    return ensemble.kind != "none" and ensemble.k > 1
