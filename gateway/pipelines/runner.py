"""Running a pipeline on a target: parse, retrieve, render, generate, read answers, vote.

Built once at startup (``PipelineRunner.from_config``): every pipeline is loaded and checked
then, and the embedding model is warmed in a background thread. Model calls go through a
``Target`` only, so the same pipeline runs on a base model, an adapter or a hosted model.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.config.schema import GatewayConfig
from gateway.engines.target import Target
from gateway.errors import GatewayError, NotFoundError, TemplateError
from gateway.pipelines import prompt
from gateway.pipelines.answers import Extraction, extract_answer, reletter, rewrite_letter
from gateway.pipelines.bank import Exemplar
from gateway.pipelines.ensemble import Shuffle, balanced_shuffles, identity, tally, winner
from gateway.pipelines.loader import Pipeline, load_pipelines
from gateway.pipelines.parse import MCQuestion, question_of
from gateway.pipelines.requests import (
    check_request,
    check_tools,
    constraint,
    letter_request,
    sampling,
)
from gateway.pipelines.responses import (
    StreamReader,
    assembled_completion,
    completion_as_sse,
    conform_completion,
    content_of,
    sum_usage,
)
from gateway.pipelines.retrieval import (
    Embedder,
    SentenceTransformerEmbedder,
    limit_blas_threads,
    nearest,
    question_key,
)
from gateway.protocol import ChatCompletionRequest
from gateway.telemetry import tracing

log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass
class PipelineResult:
    #: OpenAI chat.completion JSON; assembled answers carry a ``switchboard`` object
    response: dict[str, Any]
    #: the extracted final letter in the client's lettering, if any
    answer: str | None
    #: votes per original letter (every option listed); {} where nothing was voted
    votes: dict[str, int]
    #: model calls made
    calls: int
    #: prompt_tokens / completion_tokens / total_tokens summed over the calls
    usage: dict[str, int] = field(default_factory=dict)


@dataclass
class Member:
    """One ensemble member's outcome."""

    shuffle: Shuffle
    text: str
    response: dict[str, Any]
    finish_reason: str | None
    extraction: Extraction | None
    calls: int
    responses: list[dict[str, Any]]

    @property
    def shown(self) -> str | None:
        return self.extraction.letter if self.extraction else None

    @property
    def answer(self) -> str | None:
        return self.shuffle.to_original(self.shown) if self.shown else None


class PipelineRunner:
    def __init__(self, pipelines: dict[str, Pipeline], embedder: Embedder | None = None) -> None:
        self.pipelines = pipelines
        needs_embedder = any(p.spec.retrieve is not None for p in pipelines.values())
        if embedder is None and needs_embedder:
            embedder = SentenceTransformerEmbedder(threads=1)
        self.embedder = embedder

    @classmethod
    def from_config(cls, config: GatewayConfig) -> PipelineRunner:
        """Load and check every pipeline; raises ``ConfigError`` naming files and lines."""
        return cls(load_pipelines(config))

    def names(self) -> list[str]:
        return sorted(self.pipelines)

    def get(self, name: str) -> Pipeline:
        pipeline = self.pipelines.get(name)
        if pipeline is None:
            raise NotFoundError(
                f"The pipeline '{name}' does not exist. Pipelines here: {', '.join(self.names())}.",
                param="switchboard.pipeline",
                code="pipeline_not_found",
            )
        return pipeline

    def warm_up(self) -> None:
        """Load the embedding model in a background thread, so no request pays for it."""
        if self.embedder is None:
            return
        limit_blas_threads()
        load = getattr(self.embedder, "load", None)
        if callable(load):
            threading.Thread(target=_quietly, args=(load,), name="embedder", daemon=True).start()

    # -- entry points ---------------------------------------------------------------------------

    async def complete(
        self, pipeline: str, target: Target, body: dict[str, Any], chat: ChatCompletionRequest
    ) -> PipelineResult:
        spec = self.get(pipeline)
        check_tools(spec, chat)
        question = question_of(chat) if spec.spec.parse else None
        upstream = {k: v for k, v in body.items() if k != "switchboard"}
        if spec.passthrough or question is None:
            upstream["messages"] = self._freeform(spec, upstream["messages"])
            response = conform_completion(await target.chat(upstream))
            answer = _read(content_of(response), question) if question else None
            return PipelineResult(response, answer, {}, 1, sum_usage([response]))
        return await self._vote(spec, question, target, upstream, chat)

    async def stream(
        self,
        pipeline: str,
        target: Target,
        body: dict[str, Any],
        chat: ChatCompletionRequest,
        *,
        on_result: Callable[[PipelineResult], None] | None = None,
    ) -> AsyncIterator[bytes]:
        """SSE bytes ending in ``data: [DONE]``.

        A pass-through (``plain``, or a free-form request) relays the engine's bytes untouched.
        A pipeline that votes streams its assembled answer once every member is in.
        ``on_result`` gets the result when the stream has finished (for logging).
        """
        spec = self.get(pipeline)
        check_tools(spec, chat)
        question = question_of(chat) if spec.spec.parse else None
        upstream = {k: v for k, v in body.items() if k != "switchboard"}
        if spec.passthrough or question is None:
            upstream["messages"] = self._freeform(spec, upstream["messages"])
            # Reading the stream only pays when there is an answer to find; usage the
            # dispatcher takes from the stream's tail itself.
            reader = StreamReader() if question is not None else None
            chunks = target.chat_stream(upstream)
            try:
                async for chunk in chunks:
                    if reader is not None:
                        reader.feed(chunk)
                    yield chunk
            finally:
                await chunks.aclose()  # type: ignore[attr-defined]
            if on_result is not None:
                answer = _read(reader.content, question) if reader and question else None
                usage = reader.usage if reader is not None else {}
                on_result(PipelineResult({}, answer, {}, 1, usage))
            return
        result = await self._vote(spec, question, target, upstream, chat)
        if on_result is not None:
            on_result(result)
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
        for event in completion_as_sse(result.response, include_usage=include_usage):
            yield event

    # -- the multiple-choice path ---------------------------------------------------------------

    async def _vote(
        self,
        pipeline: Pipeline,
        question: MCQuestion,
        target: Target,
        upstream: dict[str, Any],
        chat: ChatCompletionRequest,
    ) -> PipelineResult:
        check_request(pipeline, chat)
        letters = question.letters
        with tracing.span("gateway.retrieval", {"switchboard.pipeline": pipeline.name}):
            exemplars = await self.retrieve(pipeline, question)
        try:
            prefix, exemplars = self._prefix(pipeline, question, exemplars)
        except TemplateError as exc:
            raise GatewayError(f"The pipeline '{pipeline.name}' failed to render: {exc}") from exc
        params = sampling(pipeline, upstream)
        ensemble = pipeline.spec.ensemble
        if ensemble.kind == "self_consistency":
            members = await self._sample(pipeline, target, params, prefix, question)
        else:
            if ensemble.kind == "choice_shuffle":
                seed = f"{ensemble.seed}:{question_key(question.question)}"
                shuffles = balanced_shuffles(len(letters), ensemble.k, seed)
            else:
                shuffles = [identity(len(letters))]
            members = await _all(
                [self._member(pipeline, target, params, prefix, question, s) for s in shuffles]
            )
        answers = [m.answer for m in members]
        with tracing.span("gateway.vote", {"switchboard.members": len(members)}):
            votes = tally(answers, letters)
            chosen_letter = winner(answers)
        chosen = next((m for m in members if m.answer == chosen_letter), members[0])
        content = _in_original_letters(chosen)
        cast = sum(votes.values())
        calls = len({id(r) for m in members for r in m.responses})
        responses = list({id(r): r for m in members for r in m.responses}.values())
        usage = sum_usage(responses)
        extension = {
            "pipeline": pipeline.name,
            "answer": chosen_letter,
            "votes": votes,
            "confidence": round(votes[chosen_letter] / cast, 4) if chosen_letter else 0.0,
            "exemplars": [e.id for e in exemplars],
            "members": [
                {"order": m.shuffle.label(), "shown": m.shown, "answer": m.answer} for m in members
            ],
            "calls": calls,
        }
        response = assembled_completion(
            chosen.response, content, chosen.finish_reason, usage, extension
        )
        return PipelineResult(response, chosen_letter, votes, calls, usage)

    async def retrieve(self, pipeline: Pipeline, question: MCQuestion) -> list[Exemplar]:
        """The k nearest exemplars, farthest first (the nearest sits next to the question)."""
        step, bank = pipeline.spec.retrieve, pipeline.bank
        if step is None or bank is None or len(bank) == 0 or self.embedder is None:
            return []
        embedder = self.embedder
        vector = await asyncio.to_thread(lambda: embedder.embed([question.question]))
        hits = nearest(
            bank.index, vector, step.k, keys=bank.keys, query_key=question_key(question.question)
        )
        return [bank.exemplars[h.row] for h in reversed(hits)]

    def _prefix(
        self, pipeline: Pipeline, question: MCQuestion, exemplars: list[Exemplar]
    ) -> tuple[list[prompt.Message], list[Exemplar]]:
        """System and few-shot turns, dropping the farthest exemplars while over budget."""
        budget = pipeline.spec.retrieve.max_prompt_chars if pipeline.spec.retrieve else None
        tail = prompt.question_turn(pipeline, question.question, question.options)
        while True:
            prefix = prompt.shared_prefix(pipeline, question.letters, exemplars)
            if budget is None or not exemplars or prompt.prompt_chars(prefix) + len(tail) <= budget:
                return prefix, exemplars
            exemplars = exemplars[1:]

    async def _member(
        self,
        pipeline: Pipeline,
        target: Target,
        params: dict[str, Any],
        prefix: list[prompt.Message],
        question: MCQuestion,
        shuffle: Shuffle,
    ) -> Member:
        shown = shuffle.shown(question.options)
        messages = prompt.member_messages(pipeline, prefix, question.question, shown)
        body = {**params, **constraint(pipeline, list(shown)), "messages": messages}
        response = await target.chat(body)
        choice = (response.get("choices") or [{}])[0]
        text, finish = content_of(response), choice.get("finish_reason")
        return await self._settle(
            pipeline, target, messages, shown, shuffle, text, response, finish
        )

    async def _sample(
        self,
        pipeline: Pipeline,
        target: Target,
        params: dict[str, Any],
        prefix: list[prompt.Message],
        question: MCQuestion,
    ) -> list[Member]:
        """Self-consistency: n samples of one prompt in one call (vLLM's ``n``)."""
        messages = prompt.member_messages(pipeline, prefix, question.question, question.options)
        ensemble = pipeline.spec.ensemble
        body = {**params, **constraint(pipeline, question.letters), "messages": messages}
        body["n"] = ensemble.k
        # k identical greedy samples would vote k times for one answer: sampling is the point.
        if not body.get("temperature"):
            body["temperature"] = ensemble.temperature
        response = await target.chat(body)
        same = identity(len(question.letters))
        settles = [
            self._settle(
                pipeline,
                target,
                messages,
                question.options,
                same,
                content_of(response, i),
                response,
                choice.get("finish_reason"),
            )
            for i, choice in enumerate(response.get("choices") or [])
        ]
        return await _all(settles)

    async def _settle(
        self,
        pipeline: Pipeline,
        target: Target,
        messages: list[prompt.Message],
        shown: dict[str, str],
        shuffle: Shuffle,
        text: str,
        response: dict[str, Any],
        finish_reason: str | None,
    ) -> Member:
        """Read the member's letter; if none and the pipeline says so, ask for the letter alone."""
        extraction = extract_answer(text, shown)
        responses = [response]
        if extraction is None and pipeline.spec.generate.fallback == "choice":
            reasoning = text.rstrip()
            follow = await target.chat(letter_request(messages, reasoning, list(shown)))
            responses.append(follow)
            letter = content_of(follow).strip()[:1].upper()
            if letter in shown:
                text = f"{reasoning}\n\nAnswer: {letter}" if reasoning else f"Answer: {letter}"
                extraction = extract_answer(text, shown)
        return Member(shuffle, text, response, finish_reason, extraction, len(responses), responses)

    def _freeform(self, pipeline: Pipeline, messages: Any) -> Any:
        try:
            return prompt.freeform_messages(pipeline, messages)
        except TemplateError as exc:
            raise GatewayError(f"The pipeline '{pipeline.name}' failed to render: {exc}") from exc


# -- helpers ------------------------------------------------------------------------------------


def _in_original_letters(member: Member) -> str:
    if member.shuffle.is_identity or member.extraction is None:
        return member.text
    text = reletter(member.text, member.shuffle.mapping())
    # reletter keeps lengths, so the extraction's span still points at the answer letter.
    assert member.answer is not None
    return rewrite_letter(text, member.extraction, member.answer)


def _read(text: str, question: MCQuestion) -> str | None:
    found = extract_answer(text, question.options)
    return found.letter if found else None


async def _all(coroutines: Sequence[Awaitable[_T]]) -> list[_T]:
    """Run concurrently; the first failure cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_wrap(c)) for c in coroutines]
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None
    return [t.result() for t in tasks]


async def _wrap(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


def _quietly(load: Callable[[], object]) -> None:
    try:
        load()
    except Exception:
        log.exception("loading the embedding model failed; retrieval will retry on first use")
        return
    gc.freeze()  # the model lives as long as the process: out of the collector's way (app.py)
