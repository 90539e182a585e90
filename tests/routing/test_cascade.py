"""Cascades on scripted engines: which step answers, what the response and the event record,
and what the config check refuses."""

from __future__ import annotations

import math
from typing import Any

import pytest

from gateway.config.loader import parse_config
from gateway.errors import ConfigError
from gateway.events.stores import SQLiteStore
from gateway.resolve import resolve
from gateway.routing.cascade import answer_prob, step_confidence
from gateway.settings import Settings
from tests.support.apps import InProcessGateway
from tests.support.fakes import FakeEngine, completion

QUESTION = "Which organ makes insulin?\nA. Liver\nB. Pancreas\nC. Kidney\nD. Spleen"

CONFIG = """
models:
  cheap:
    engine: vllm
    urls: ["http://127.0.0.1:9"]
    pricing: {prompt_per_1m: 1, completion_per_1m: 1}
  dear:
    engine: vllm
    urls: ["http://127.0.0.1:9"]
    pricing: {prompt_per_1m: 100, completion_per_1m: 100}
routes:
  medqa:
    allow_pin: true
    variants:
      tuned: {target: cheap, weight: 0}
      prompted: {target: dear, weight: 0}
      both:
        weight: 1
        cascade: [{variant: tuned, accept: {answer_prob: THRESHOLD}}, {variant: prompted}]
"""


class LetterEngine(FakeEngine):
    """Answers "Answer: LETTER"; with logprobs asked for, the letter's token has ``prob``."""

    def __init__(self, model_id: str, letter: str, prob: float) -> None:
        super().__init__(model_id, text=f"Answer: {letter}")
        self.letter, self.prob = letter, prob

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        self.bodies.append(body)
        response = completion(self.text)
        if body.get("logprobs"):
            rest = (1 - self.prob) / 2
            tokens = [
                {"token": "Answer", "logprob": -0.01, "top_logprobs": []},
                {"token": ":", "logprob": -0.01, "top_logprobs": []},
                {
                    "token": f" {self.letter}",
                    "logprob": math.log(self.prob),
                    "top_logprobs": [
                        {"token": f" {self.letter}", "logprob": math.log(self.prob)},
                        {"token": " Z", "logprob": math.log(rest)},
                        {"token": " Y", "logprob": math.log(rest)},
                    ],
                },
            ]
            response["choices"][0]["logprobs"] = {"content": tokens}
        return response


async def _ask(gateway: InProcessGateway, threshold: float, prob: float) -> tuple[Any, Any]:
    engines = {"cheap": LetterEngine("cheap", "B", prob), "dear": LetterEngine("dear", "C", 0.9)}
    config = CONFIG.replace("THRESHOLD", str(threshold))
    async with gateway(engines, config) as (_, raw):
        resp = await raw.post(
            "/v1/chat/completions",
            json={"model": "medqa", "messages": [{"role": "user", "content": QUESTION}]},
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        await gateway.state.events.flush()
        event = await gateway.state.events.get_event(body["switchboard"]["inference_id"])
        assert engines["cheap"].bodies[0]["logprobs"] is True
        return body, event


async def test_a_confident_first_step_answers(gateway: InProcessGateway) -> None:
    body, event = await _ask(gateway, threshold=0.8, prob=0.95)
    cascade = body["switchboard"]["cascade"]
    assert cascade["step"] == 0 and cascade["escalated"] is False
    assert body["choices"][0]["message"]["content"] == "Answer: B"
    assert "logprobs" not in body["choices"][0]  # asked for by the cascade, not the client
    assert cascade["steps"][0]["confidence"] == pytest.approx(0.95, abs=1e-3)
    assert event.cascade_step == 0 and event.answer == "B" and event.calls == 1
    assert event.pipeline == "cascade" and event.variant == "both"


async def test_an_unsure_first_step_escalates(gateway: InProcessGateway) -> None:
    body, event = await _ask(gateway, threshold=0.8, prob=0.5)
    cascade = body["switchboard"]["cascade"]
    assert cascade["step"] == 1 and cascade["escalated"] is True
    assert [s["accepted"] for s in cascade["steps"]] == [False, True]
    assert body["choices"][0]["message"]["content"] == "Answer: C"
    assert event.answer == "C" and event.cascade_step == 1 and event.calls == 2
    # Every step's tokens and cost: 5 tokens at 1 per 1M, then 5 at 100 per 1M.
    costs = [s["cost"] for s in event.steps]
    assert costs == [pytest.approx(5e-6), pytest.approx(5e-4)]
    assert event.cost == pytest.approx(sum(costs))
    assert event.prompt_tokens == 6 and event.completion_tokens == 4


async def test_the_event_keeps_the_steps_in_the_database(gateway: InProcessGateway) -> None:
    body, _ = await _ask(gateway, threshold=0.8, prob=0.5)
    store = SQLiteStore(gateway.home / "events.db")
    stored = store.get_event(body["switchboard"]["inference_id"])
    store.close()
    assert stored is not None
    assert [s["variant"] for s in stored["steps"]] == ["tuned", "prompted"]
    assert stored["cascade_step"] == 1


def test_answer_prob_sums_the_tokens_that_read_as_the_letter() -> None:
    response = completion("Answer: B")
    response["choices"][0]["logprobs"] = {
        "content": [
            {"token": "Answer:", "logprob": 0.0, "top_logprobs": []},
            {
                "token": " B",
                "logprob": math.log(0.6),
                "top_logprobs": [
                    {"token": " B", "logprob": math.log(0.6)},
                    {"token": "B", "logprob": math.log(0.2)},
                    {"token": " A", "logprob": math.log(0.2)},
                ],
            },
        ]
    }
    assert answer_prob(response, "B") == pytest.approx(0.8)
    assert answer_prob(completion("Answer: B"), "B") is None  # no logprobs: no confidence


class _Voted:
    def __init__(self) -> None:
        self.response: dict[str, Any] = {}
        self.answer: str | None = "A"
        self.votes = {"A": 3, "B": 1, "C": 1, "D": 0}
        self.calls = 5
        self.usage: dict[str, int] = {}


def test_vote_share_is_the_winners_share() -> None:
    from gateway.config.loop import AcceptSpec

    assert step_confidence(_Voted(), "A", AcceptSpec(vote_share=0.8)) == 0.6


@pytest.mark.parametrize(
    ("steps", "problem"),
    [
        ("[{variant: nope, accept: {answer_prob: 0.5}}, {variant: b}]", "'nope' is not another"),
        ("[{variant: a, accept: {vote_share: 0.5}}, {variant: b}]", "casts no votes"),
    ],
)
def test_the_config_check_refuses_bad_steps(tmp_path: Any, steps: str, problem: str) -> None:
    config = parse_config(
        f"""
models:
  m: {{engine: vllm, urls: ["http://127.0.0.1:9"]}}
routes:
  r:
    variants:
      a: {{target: m, weight: 1}}
      b: {{target: m}}
      c: {{cascade: {steps}}}
""",
        "t.yaml",
    )
    with pytest.raises(ConfigError) as caught:
        resolve(config, Settings(home=tmp_path))
    assert any(problem in p for p in caught.value.problems), caught.value.problems


STEP = "{variant: a, accept: {vote_share: 0.5}}"


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("{cascade: [{variant: a}, {variant: b}]}", "needs 'accept'"),
        (
            "{cascade: [{variant: a, accept: {vote_share: 0.5}}, "
            "{variant: b, accept: {vote_share: 1}}]}",
            "always answers",
        ),
        (
            "{target: m, cascade: [{variant: a, accept: {vote_share: 0.5}}, {variant: b}]}",
            "no 'target'",
        ),
        (
            "{cascade: [{variant: a, accept: {vote_share: 0.5, answer_prob: 0.5}}, {variant: b}]}",
            "exactly one",
        ),
    ],
)
def test_the_schema_refuses_bad_cascades(variant: str, message: str) -> None:
    text = f"""
models:
  m: {{engine: vllm, urls: ["http://127.0.0.1:9"]}}
routes:
  r:
    variants:
      a: {{target: m, weight: 1}}
      b: {{target: m}}
      c: {variant}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "t.yaml")
    assert message in str(caught.value)
