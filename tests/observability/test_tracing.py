"""Spans exported to an in-memory exporter: parents, attributes, propagation, and off means off.

Through the in-process gateway with scripted engines; the medprompt request runs the real
pipeline (retrieval with the shipped bank, five members, the vote), as
tests/pipelines/test_pipelines_api.py does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.config.schema import TelemetrySpec
from gateway.engines.vllm import VLLMEngine
from gateway.telemetry import tracing
from gateway.telemetry.tracing import Tracing, traces_endpoint
from tests.observability.support import PROMPT_MARK, adapter_folder, chat, config, fake_engines
from tests.pipelines.test_pipelines_api import ScriptedEngine, always_a
from tests.support.adapter_fakes import ScriptedVLLM
from tests.support.apps import AppFactory
from tests.support.handler_server import serving

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


class RecordingVLLM(ScriptedVLLM):
    """The scripted vLLM, keeping the ``traceparent`` each chat call arrived with."""

    def __init__(self) -> None:
        super().__init__()
        self.traceparents: list[str | None] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/chat/completions":
            self.traceparents.append(request.headers.get("traceparent"))
        return super().handle(request)


@pytest.fixture
def vllm() -> RecordingVLLM:
    return RecordingVLLM()


@pytest.fixture
async def vllm_url(vllm: RecordingVLLM) -> AsyncIterator[str]:
    async with serving(vllm.handle) as url:
        yield url


def by_name(spans: Sequence[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    found: int = span.context.span_id
    return found


def no_prompt_text(spans: Sequence[ReadableSpan]) -> None:
    for span in spans:
        assert PROMPT_MARK not in orjson.dumps(dict(span.attributes or {})).decode(), span.name


async def test_a_plain_request_is_one_span_with_its_steps_and_joins_the_clients_trace(
    gateway: AppFactory, tmp_path: Path, vllm: RecordingVLLM, vllm_url: str
) -> None:
    exporter = InMemorySpanExporter()
    base = VLLMEngine(model_id="base", upstream_model="base-upstream", urls=[vllm_url])
    engines = {**fake_engines(), "base": base}
    async with gateway(engines, config(adapter_folder(tmp_path), vllm_url)) as (_, raw):
        gateway.state.tracing.export_to(exporter)
        resp = await raw.post(
            "/v1/chat/completions",
            json={"model": "qa", "messages": [{"role": "user", "content": PROMPT_MARK}]},
            headers={"traceparent": TRACEPARENT},
        )
        assert resp.status_code == 200
        spans = by_name(exporter.get_finished_spans())
        exporter.clear()
        assert (await chat(raw, "base")).status_code == 200  # on the real VLLMEngine
        upstream = by_name(exporter.get_finished_spans())

    (request,) = spans["POST /v1/chat/completions"]
    assert request.kind == SpanKind.SERVER
    assert request.context is not None and f"{request.context.trace_id:032x}" == CLIENT_TRACE
    assert parent_of(request) == int(CLIENT_SPAN, 16)  # the client's traceparent
    attributes = dict(request.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "qa"
    assert attributes["switchboard.route"] == "qa"
    assert attributes["switchboard.variant"] == "first"
    assert attributes["switchboard.target"] == "m1"
    assert attributes["gen_ai.usage.input_tokens"] == 3
    assert attributes["gen_ai.usage.output_tokens"] == 2
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["http.response.status_code"] == 200
    assert attributes["switchboard.inference_id"] == resp.headers["x-switchboard-inference-id"]
    for step in ("gateway.admission", "gateway.routing", "chat m1", "gateway.event_write"):
        (child,) = spans[step]
        assert parent_of(child) == span_id(request), step
    (call,) = spans["chat m1"]
    assert call.kind == SpanKind.CLIENT
    assert dict(call.attributes or {})["gen_ai.request.model"] == "upstream-fake"
    assert dict(call.attributes or {})["gen_ai.response.finish_reasons"] == ("stop",)
    assert dict(spans["gateway.routing"][0].attributes or {})["switchboard.variant"] == "first"
    no_prompt_text([s for group in spans.values() for s in group])

    # The engine call's context went to vLLM as its traceparent.
    (base_call,) = upstream["chat base"]
    assert base_call.context is not None
    sent = vllm.traceparents[-1]
    assert sent is not None
    context = base_call.context
    assert sent.startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-")


async def test_a_medprompt_request_traces_retrieval_every_member_and_the_vote(
    gateway: AppFactory,
) -> None:
    from gateway.pipelines.loader import shipped_prompts_dir

    prompts_dir = shipped_prompts_dir()
    assert prompts_dir is not None
    bank = (prompts_dir / "medprompt" / "exemplars.jsonl").read_bytes()
    first = orjson.loads(bank.split(b"\n")[0])
    exporter = InMemorySpanExporter()
    async with gateway({"fake": ScriptedEngine(always_a)}) as (_, raw):
        gateway.state.tracing.export_to(exporter)
        resp = await raw.post(
            "/v1/chat/completions",
            json={
                "model": "fake",
                "messages": [{"role": "user", "content": "see extension"}],
                "switchboard": {
                    "pipeline": "medprompt",
                    "question": first["question"],
                    "options": first["options"],
                },
            },
        )
        assert resp.status_code == 200
    spans = by_name(exporter.get_finished_spans())
    (request,) = spans["POST /v1/chat/completions"]
    assert parent_of(request) is None  # no traceparent: a new trace
    members = spans["chat fake"]
    assert len(members) == 5  # the choice-shuffle ensemble: one call per member
    for child in [*members, *spans["gateway.retrieval"], *spans["gateway.vote"]]:
        assert parent_of(child) == span_id(request), child.name
    attributes = dict(request.attributes or {})
    assert attributes["switchboard.pipeline"] == "medprompt"
    assert attributes["gen_ai.usage.input_tokens"] == 5 * 10
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert dict(spans["gateway.vote"][0].attributes or {})["switchboard.members"] == 5
    assert {s.context.trace_id for s in exporter.get_finished_spans() if s.context} == {
        request.context.trace_id if request.context else 0
    }


async def test_a_stream_is_traced_to_its_end(gateway: AppFactory, tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    async with gateway(fake_engines(), config(adapter_folder(tmp_path), "http://x")) as (_, raw):
        gateway.state.tracing.export_to(exporter)
        resp = await chat(raw, "m1", stream=True)
        assert resp.text.endswith("[DONE]\n\n")
    spans = by_name(exporter.get_finished_spans())
    (request,) = spans["POST /v1/chat/completions"]
    (call,) = spans["chat m1"]
    assert parent_of(call) == span_id(request)
    assert dict(call.attributes or {})["gen_ai.request.stream"] is True
    assert request.end_time is not None and call.end_time is not None
    assert request.end_time >= call.end_time  # the request span covers the whole stream


async def test_a_failed_request_marks_its_span(gateway: AppFactory, tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    async with gateway(fake_engines(), config(adapter_folder(tmp_path), "http://x")) as (_, raw):
        gateway.state.tracing.export_to(exporter)
        assert (await chat(raw, "broken")).status_code == 502
    (request,) = by_name(exporter.get_finished_spans())["POST /v1/chat/completions"]
    attributes: dict[str, Any] = dict(request.attributes or {})
    assert attributes["error.type"] == "upstream_error"
    assert attributes["http.response.status_code"] == 502
    assert not request.status.is_ok


def test_off_without_an_endpoint_and_on_with_one() -> None:
    assert not Tracing.from_config(TelemetrySpec(), env={}).enabled
    assert traces_endpoint(None, {}) is None
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}
    assert traces_endpoint(None, env) == "http://collector:4318/v1/traces"
    assert traces_endpoint("http://c:4318/v1/traces", {}) == "http://c:4318/v1/traces"
    on = Tracing.from_config(TelemetrySpec(otlp_endpoint="http://127.0.0.1:9"), env={})
    try:
        assert on.enabled
    finally:
        on.shutdown()


def test_off_the_steps_are_one_shared_no_op() -> None:
    """With tracing off (no active Tracing in the context), a step allocates nothing: the same
    no-op context manager every time, and the engine's own call is returned untouched."""
    assert tracing.span("gateway.vote") is tracing.span("gateway.retrieval")
    headers = {"content-type": "application/json"}
    assert tracing.upstream_headers(headers) is headers
    with tracing.span("gateway.vote") as span:
        assert not span.is_recording()
