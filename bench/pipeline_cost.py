"""The gateway's own cost per request with the engine excluded, step by step, in process.

    python -m bench.pipeline_cost [--iterations N] [--json FILE]

The engine is a stub that answers at once, so what is timed is Switchboard's work alone:

- route choice: ``Route.assign`` for a two-variant route with a sticky user key;
- request validation and the question parse (``ChatCompletionRequest``, ``question_of``);
- retrieval: the query embedding (all-MiniLM-L6-v2 on one thread) and the kNN search (k=5) over
  the shipped medprompt bank;
- rendering: the shared prefix (system and five few-shot turns) and the five members' turns;
- the 5-way choice-shuffle fan-out of the shipped medprompt pipeline through
  ``PipelineRunner.complete``, with the query embedding served from a table (it is timed
  above), so the figure is parse + kNN + render + five concurrent calls + reading and voting;
- the same with the real embedder (what a request pays in all), and a plain pass-through.

Questions are the bank's own, asked in turn (the kNN search drops the question itself from its
neighbours, as it does for any duplicate); nothing here caches a question's work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.upstream import run
from gateway.config.loader import parse_config
from gateway.engines.base import EngineHealth
from gateway.engines.target import base_target
from gateway.pipelines.bank import Exemplar
from gateway.pipelines.ensemble import balanced_shuffles
from gateway.pipelines.loader import Pipeline, load_pipelines
from gateway.pipelines.parse import MCQuestion, question_of
from gateway.pipelines.prompt import member_messages, question_turn, shared_prefix
from gateway.pipelines.retrieval import (
    SentenceTransformerEmbedder,
    limit_blas_threads,
    nearest,
    question_key,
)
from gateway.pipelines.runner import PipelineRunner
from gateway.protocol import ChatCompletionRequest
from gateway.routing.assignment import Router

CONFIG = """
models:
  stub: {engine: vllm, urls: ["http://127.0.0.1:9"]}
routes:
  ab:
    variants:
      prompted: {target: stub, pipeline: medprompt, weight: 1}
      plain: {target: stub, pipeline: plain, weight: 1}
"""


class StubEngine:
    """Answers every call at once, with a letter the answer reader finds."""

    model_id = "stub"
    upstream_model = "stub"

    def __init__(self) -> None:
        self.calls = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def health(self) -> EngineHealth:
        return EngineHealth(True, "ready")

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        return {
            "id": f"chatcmpl-{self.calls}",
            "object": "chat.completion",
            "created": 0,
            "model": self.upstream_model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Short reasoning.\n\nAnswer: A"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 900, "completion_tokens": 40, "total_tokens": 940},
        }

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        yield b"data: [DONE]\n\n"


class TableEmbedder:
    """Query vectors computed once beforehand: the fan-out figure leaves the embedding out."""

    dim = 384

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts])


def user_message(exemplar: Exemplar) -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in exemplar.options.items())
    return f"{exemplar.question}\n{options}\nAnswer with the letter."


def timed(fn: Callable[[int], object], n: int) -> list[float]:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - t0)
    return samples


async def timed_async(fn: Callable[[int], Awaitable[object]], n: int) -> list[float]:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        await fn(i)
        samples.append(time.perf_counter() - t0)
    return samples


def row(step: str, samples: list[float], note: str) -> dict[str, Any]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {
        "step": step,
        "n": len(samples),
        "median_us": statistics.median(samples) * 1e6,
        "p99_us": p99 * 1e6,
        "note": note,
    }


async def measure(iterations: int) -> list[dict[str, Any]]:
    config = parse_config(CONFIG, "pipeline_cost")
    pipelines: dict[str, Pipeline] = load_pipelines(config)
    medprompt = pipelines["medprompt"]
    assert medprompt.bank is not None and medprompt.spec.retrieve is not None
    bank = medprompt.bank
    # The bank's questions over and over: a pass asks each once.
    exemplars = [bank.exemplars[i % len(bank.exemplars)] for i in range(iterations)]
    bodies = [
        {"model": "ab", "messages": [{"role": "user", "content": user_message(e)}]}
        for e in exemplars
    ]
    chats = [ChatCompletionRequest.model_validate(b) for b in bodies]
    questions: list[MCQuestion] = []
    for chat in chats:
        question = question_of(chat)
        assert question is not None, "a bank question must parse as multiple choice"
        questions.append(question)
    n = len(exemplars)
    limit_blas_threads()
    steps: list[dict[str, Any]] = []

    route = Router(config).get("ab")
    assert route is not None
    steps.append(
        row(
            "route choice",
            timed(lambda i: route.assign(user=f"user-{i}", headers={}), n),
            "two variants, sticky user key",
        )
    )
    steps.append(
        row(
            "validate request",
            timed(lambda i: ChatCompletionRequest.model_validate(bodies[i]), n),
            "pydantic, one user message",
        )
    )
    steps.append(
        row("parse question", timed(lambda i: question_of(chats[i]), n), "lettered options")
    )

    embedder = SentenceTransformerEmbedder(threads=1)
    embedder.load()
    vectors: dict[str, np.ndarray] = {}

    def embed(i: int) -> None:
        vectors[questions[i].question] = embedder.embed([questions[i].question])[0]

    # Embedding takes milliseconds: fewer samples keep the run short and the median as sure.
    slow_n = min(n, 300)
    steps.append(row("retrieval: embed query", timed(embed, slow_n), "all-MiniLM-L6-v2, 1 thread"))
    for question in questions:  # the rest, untimed, for the steps that need vectors
        if question.question not in vectors:
            vectors[question.question] = embedder.embed([question.question])[0]
    k = medprompt.spec.retrieve.k

    def knn(i: int) -> None:
        query = questions[i].question
        nearest(bank.index, vectors[query], k, keys=bank.keys, query_key=question_key(query))

    steps.append(row("retrieval: kNN search", timed(knn, n), f"k={k}, {len(bank)} exemplars"))

    neighbours = [
        [bank.exemplars[h.row] for h in nearest(bank.index, vectors[q.question], k)]
        for q in questions
    ]
    ensemble = medprompt.spec.ensemble

    def render(i: int) -> None:
        question = questions[i]
        prefix = shared_prefix(medprompt, question.letters, neighbours[i])
        question_turn(medprompt, question.question, question.options)
        seed = f"{ensemble.seed}:{question_key(question.question)}"
        for shuffle in balanced_shuffles(len(question.letters), ensemble.k, seed):
            member_messages(medprompt, prefix, question.question, shuffle.shown(question.options))

    steps.append(row("render prompts", timed(render, n), f"prefix + {ensemble.k} members' turns"))

    engine = StubEngine()
    target = base_target("stub", engine)
    table_runner = PipelineRunner(pipelines, embedder=TableEmbedder(vectors))
    real_runner = PipelineRunner(pipelines, embedder=embedder)

    async def fan_out(i: int) -> None:
        await table_runner.complete("medprompt", target, bodies[i], chats[i])

    calls_before = engine.calls
    fan = await timed_async(fan_out, n)
    per_request = (engine.calls - calls_before) / n
    steps.append(
        row(
            f"{ensemble.k}-way fan-out, whole pipeline",
            fan,
            f"medprompt, stub engine, {per_request:g} calls; embedding excluded",
        )
    )

    async def end_to_end(i: int) -> None:
        await real_runner.complete("medprompt", target, bodies[i], chats[i])

    steps.append(
        row(
            "medprompt with embedding",
            await timed_async(end_to_end, slow_n),
            "as above plus the query embedding (in a thread)",
        )
    )

    async def plain(i: int) -> None:
        await table_runner.complete("plain", target, bodies[i], chats[i])

    steps.append(row("plain pass-through", await timed_async(plain, n), "stub engine, 1 call"))
    return steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline_cost", description=__doc__)
    parser.add_argument("--iterations", type=int, default=1000, help="questions per step")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    steps = run(lambda: measure(args.iterations))
    for step in steps:
        print(
            f"{step['step']:<34} median {step['median_us']:9.1f} µs  "
            f"p99 {step['p99_us']:9.1f} µs  ({step['note']})"
        )
    if args.json:
        args.json.write_text(json.dumps({"steps": steps}, indent=2) + "\n")


if __name__ == "__main__":
    main()
