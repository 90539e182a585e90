"""Pipelines through the official openai client against the app, with a scripted engine.

The engine seam is scripted so that the model's behaviour is known (it knows the answer, it is
position-biased, it never concludes); everything above it (parse, templates, retrieval with the
real embedder and the shipped bank, shuffling, voting, the response) is the real code. The same
paths run on the real vLLM in tests/live/test_pipelines.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from gateway.datasets import split_of
from gateway.engines.base import EngineHealth

QUESTION = "Which change is a reversible switch of one adult cell type for another?"
OPTIONS = {"A": "Atrophy", "B": "Hyperplasia", "C": "Metaplasia", "D": "Dysplasia"}
ASK = QUESTION + "\n\n" + "\n".join(f"{k}. {v}" for k, v in OPTIONS.items())
MESSAGES: list[Any] = [{"role": "user", "content": ASK}]


def _completion(texts: list[str]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "upstream-fake",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
            for i, t in enumerate(texts)
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
    }


def shown_options(body: dict[str, Any]) -> dict[str, str]:
    """The options of the last user turn, as the model saw them."""
    last = body["messages"][-1]
    if last["role"] == "assistant":  # a fallback call continues the member's reply
        last = body["messages"][-2]
    return dict(re.findall(r"^\(([A-J])\) (.*)$", last["content"], re.MULTILINE))


class ScriptedEngine:
    """An engine whose reply is a function of the request body."""

    def __init__(self, reply: Callable[[dict[str, Any]], str]) -> None:
        self.model_id = "fake"
        self.upstream_model = "upstream-fake"
        self.reply = reply
        self.bodies: list[dict[str, Any]] = []
        self.stream_bytes: list[bytes] = []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def health(self) -> EngineHealth:
        return EngineHealth(True, "ready")

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        self.bodies.append(body)
        choice = (body.get("structured_outputs") or {}).get("choice")
        if choice:
            return _completion([choice[-1]])  # a constrained call: the last allowed string
        return _completion([self.reply(body) for _ in range(body.get("n") or 1)])

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        self.bodies.append(body)
        for piece in self.reply(body).split(" "):
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "u"}
            chunk["choices"] = [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]
            data = b"data: " + orjson.dumps(chunk) + b"\n\n"
            self.stream_bytes.append(data)
            yield data
        self.stream_bytes.append(b"data: [DONE]\n\n")
        yield b"data: [DONE]\n\n"


def knows_metaplasia(body: dict[str, Any]) -> str:
    letter = next((k for k, v in shown_options(body).items() if v == "Metaplasia"), None)
    if letter is None:
        return "Hello there."
    return f"Cells change type and can change back.\n\nAnswer: ({letter})"


def always_a(_: dict[str, Any]) -> str:
    return "First things first.\nAnswer: A"


def _config(tmp_path: Path, k: int = 5) -> str:
    folder = tmp_path / "pipes" / "shuffle"
    folder.mkdir(parents=True)
    (folder / "pipeline.yaml").write_text(
        "render: {system: system.j2, question: question.j2}\n"
        "generate: {max_tokens: 64, fallback: choice}\n"
        f"ensemble: {{kind: choice_shuffle, k: {k}, seed: 3}}\n"
    )
    prompts = Path(__file__).resolve().parents[2] / "prompts" / "cot"
    for name in ("system.j2", "question.j2"):
        (folder / name).write_text((prompts / name).read_text())
    return (
        "limits: {max_body_bytes: 65536, max_n: 4, max_tokens: 512}\n"
        'models:\n  fake: {engine: vllm, urls: ["http://127.0.0.1:9"]}\n'
        f"pipelines:\n  folders: [{tmp_path / 'pipes'}]\n"
    )


def _extension(result: Any) -> dict[str, Any]:
    extension: dict[str, Any] = result.model_extra["switchboard"]
    return extension


async def test_a_model_that_knows_gets_all_votes_and_original_letters(
    gateway: Any, tmp_path: Path
) -> None:
    engine = ScriptedEngine(knows_metaplasia)
    async with gateway({"fake": engine}, config=_config(tmp_path)) as (client, _):
        result = await client.chat.completions.create(
            model="fake", messages=MESSAGES, extra_body={"switchboard": {"pipeline": "shuffle"}}
        )
    ext = _extension(result)
    assert ext["votes"] == {"A": 0, "B": 0, "C": 5, "D": 0}
    assert ext["answer"] == "C" and ext["confidence"] == 1.0 and ext["calls"] == 5
    assert [m["answer"] for m in ext["members"]] == ["C"] * 5
    # Each option took each position at least once over the five orders.
    assert {m["order"][i] for m in ext["members"] for i in range(4)} == set("ABCD")
    assert result.choices[0].message.content.endswith("Answer: (C)")
    assert result.usage is not None and result.usage.total_tokens == 5 * 14
    # Members ran with the pipeline's prompt, not the client's, and no extension upstream.
    assert len(engine.bodies) == 5
    assert all("switchboard" not in b and b["max_tokens"] == 64 for b in engine.bodies)


async def test_position_bias_spreads_votes_and_reply_is_relettered(
    gateway: Any, tmp_path: Path
) -> None:
    engine = ScriptedEngine(always_a)
    async with gateway({"fake": engine}, config=_config(tmp_path, k=4)) as (client, _):
        result = await client.chat.completions.create(
            model="fake", messages=MESSAGES, extra_body={"switchboard": {"pipeline": "shuffle"}}
        )
    ext = _extension(result)
    assert ext["votes"] == {"A": 1, "B": 1, "C": 1, "D": 1}
    # A four-way tie goes to the first member, which shows the client's order.
    assert ext["answer"] == "A" and ext["members"][0]["order"] == "ABCD"
    assert ext["confidence"] == 0.25


async def test_no_letter_in_the_reasoning_falls_back_to_a_constrained_letter(
    gateway: Any, tmp_path: Path
) -> None:
    engine = ScriptedEngine(lambda _: "I keep thinking and never conclude")
    async with gateway({"fake": engine}, config=_config(tmp_path)) as (client, _):
        result = await client.chat.completions.create(
            model="fake", messages=MESSAGES, extra_body={"switchboard": {"pipeline": "shuffle"}}
        )
    ext = _extension(result)
    assert sum(ext["votes"].values()) == 5 and ext["calls"] == 10
    follow = [b for b in engine.bodies if b.get("continue_final_message")]
    assert len(follow) == 5
    assert follow[0]["messages"][-1]["content"].endswith("never conclude\n\nAnswer:")
    assert follow[0]["structured_outputs"] == {"choice": [" A", " B", " C", " D"]}
    assert result.choices[0].message.content.startswith("I keep thinking")


async def test_streamed_ensemble_sends_the_assembled_answer(gateway: Any, tmp_path: Path) -> None:
    engine = ScriptedEngine(knows_metaplasia)
    async with gateway({"fake": engine}, config=_config(tmp_path)) as (client, raw):
        stream = await client.chat.completions.create(
            model="fake",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"switchboard": {"pipeline": "shuffle"}},
        )
        chunks = [c async for c in stream]
        body = {"model": "fake", "messages": MESSAGES, "stream": True}
        body["switchboard"] = {"pipeline": "shuffle"}
        text = (await raw.post("/v1/chat/completions", json=body)).text
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content.endswith("Answer: (C)")
    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    assert final.model_extra is not None and final.model_extra["switchboard"]["answer"] == "C"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 70
    assert text.rstrip().endswith("data: [DONE]")


async def test_plain_streams_are_relayed_byte_for_byte(gateway: Any) -> None:
    engine = ScriptedEngine(lambda _: "one two three")
    async with gateway({"fake": engine}) as (_, raw):
        body = {"model": "fake", "messages": MESSAGES, "stream": True}
        body["switchboard"] = {"pipeline": "plain"}
        received = (await raw.post("/v1/chat/completions", json=body)).content
    assert received == b"".join(engine.stream_bytes)
    assert "switchboard" not in engine.bodies[0]


async def test_cot_parses_the_message_and_free_form_gets_its_system_message(gateway: Any) -> None:
    engine = ScriptedEngine(knows_metaplasia)
    async with gateway({"fake": engine}) as (client, _):
        extra = {"switchboard": {"pipeline": "cot"}}
        result = await client.chat.completions.create(
            model="fake", messages=MESSAGES, extra_body=extra
        )
        free = await client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "Hi"}], extra_body=extra
        )
    ext = _extension(result)
    assert ext["votes"] == {"A": 0, "B": 0, "C": 1, "D": 0} and ext["answer"] == "C"
    sent = engine.bodies[0]["messages"]
    assert sent[0]["role"] == "system" and "Answer: X" in sent[0]["content"]
    assert sent[-1]["content"].startswith(QUESTION) and "(C) Metaplasia" in sent[-1]["content"]
    assert free.choices[0].message.content is not None
    assert engine.bodies[1]["messages"][0]["role"] == "system"
    assert engine.bodies[1]["messages"][1:] == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    "attack", ["{{7*7}}", "{{ ''.__class__ }}", "{% for x in range(3) %}x{% endfor %}"]
)
async def test_injection_reaches_the_model_verbatim(gateway: Any, attack: str) -> None:
    engine = ScriptedEngine(always_a)
    async with gateway({"fake": engine}) as (client, _):
        await client.chat.completions.create(
            model="fake",
            messages=[{"role": "user", "content": "ignored"}],
            extra_body={
                "switchboard": {
                    "pipeline": "cot",
                    "question": f"Is {attack} safe?",
                    "options": {"A": attack, "B": "no"},
                }
            },
        )
    last = engine.bodies[0]["messages"][-1]["content"]
    assert f"Is {attack} safe?" in last and f"(A) {attack}" in last


async def test_medprompt_retrieves_training_exemplars_and_never_the_question(
    gateway: Any,
) -> None:
    from gateway.pipelines.loader import shipped_prompts_dir

    prompts_dir = shipped_prompts_dir()
    assert prompts_dir is not None
    first = orjson.loads(
        (prompts_dir / "medprompt" / "exemplars.jsonl").read_bytes().split(b"\n")[0]
    )
    engine = ScriptedEngine(always_a)
    async with gateway({"fake": engine}) as (client, _):
        result = await client.chat.completions.create(
            model="fake",
            messages=[{"role": "user", "content": "see extension"}],
            extra_body={
                "switchboard": {
                    "pipeline": "medprompt",
                    "question": first["question"],
                    "options": first["options"],
                }
            },
        )
    ext = _extension(result)
    assert sum(ext["votes"].values()) == 5 and len(ext["members"]) == 5
    assert ext["exemplars"] and first["id"] not in ext["exemplars"]
    assert all(split_of(i) == "train" for i in ext["exemplars"])
    # system, k few-shot pairs, then the question: the same prefix for every member.
    messages = engine.bodies[0]["messages"]
    assert len(messages) == 1 + 2 * len(ext["exemplars"]) + 1
    prefixes = {orjson.dumps(b["messages"][:-1]) for b in engine.bodies}
    assert len(prefixes) == 1


@pytest.mark.parametrize(
    ("extension", "param"),
    [
        ({"pipeline": "Nope!"}, "switchboard.pipeline"),
        ({"pipeline": "cot", "options": {"B": "x", "C": "y"}}, "switchboard"),
        ({"pipeline": "cot", "options": {"A": "x"}}, "switchboard"),
        ({"pipeline": "cot", "question": "Q without options"}, "switchboard"),
        ({"pipelin": "cot"}, "switchboard.pipelin"),
    ],
)
async def test_bad_extension_is_a_400(gateway: Any, extension: dict[str, Any], param: str) -> None:
    async with gateway({"fake": ScriptedEngine(always_a)}) as (client, _):
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(
                model="fake", messages=MESSAGES, extra_body={"switchboard": extension}
            )
    assert info.value.body["param"] == param  # type: ignore[index]


async def test_unknown_pipeline_is_a_404_and_n_above_one_is_refused(gateway: Any) -> None:
    async with gateway({"fake": ScriptedEngine(always_a)}) as (client, _):
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(
                model="fake", messages=MESSAGES, extra_body={"switchboard": {"pipeline": "nope"}}
            )
        assert info.value.code == "pipeline_not_found"
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(
                model="fake",
                messages=MESSAGES,
                n=2,
                extra_body={"switchboard": {"pipeline": "cot"}},
            )
        assert bad.value.body["param"] == "n"  # type: ignore[index]


def _custom(tmp_path: Path, yaml: str) -> str:
    folder = tmp_path / "pipes" / "custom"
    folder.mkdir(parents=True)
    (folder / "pipeline.yaml").write_text(f"render: {{question: question.j2}}\n{yaml}")
    (folder / "question.j2").write_text(
        "{{ question }}\n{% for o in options %}\n({{ o.letter }}) {{ o.text }}\n{% endfor %}"
    )
    return (
        'models:\n  fake: {engine: vllm, urls: ["http://127.0.0.1:9"]}\n'
        f"pipelines:\n  folders: [{tmp_path / 'pipes'}]\n"
    )


async def test_self_consistency_votes_over_n_samples_of_one_call(
    gateway: Any, tmp_path: Path
) -> None:
    replies = iter(["Answer: B", "Answer: C", "Answer: B", "no idea", "Answer: B"])
    engine = ScriptedEngine(lambda _: next(replies))
    config = _custom(tmp_path, "ensemble: {kind: self_consistency, k: 5, temperature: 0.9}\n")
    async with gateway({"fake": engine}, config=config) as (client, _):
        result = await client.chat.completions.create(
            model="fake", messages=MESSAGES, extra_body={"switchboard": {"pipeline": "custom"}}
        )
    ext = _extension(result)
    assert ext["votes"] == {"A": 0, "B": 3, "C": 1, "D": 0} and ext["answer"] == "B"
    assert ext["calls"] == 1 and ext["confidence"] == 0.75
    assert engine.bodies[0]["n"] == 5 and engine.bodies[0]["temperature"] == 0.9


async def test_constrain_choice_sends_vllm_structured_outputs(gateway: Any, tmp_path: Path) -> None:
    engine = ScriptedEngine(always_a)
    config = _custom(tmp_path, "generate: {constrain: choice, max_tokens: 1}\n")
    async with gateway({"fake": engine}, config=config) as (client, _):
        result = await client.chat.completions.create(
            model="fake", messages=MESSAGES, extra_body={"switchboard": {"pipeline": "custom"}}
        )
    assert engine.bodies[0]["structured_outputs"] == {"choice": ["A", "B", "C", "D"]}
    assert _extension(result)["answer"] == "D"  # the scripted engine picks the last choice
