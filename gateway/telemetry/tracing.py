"""OpenTelemetry traces: one span per chat request, children for each step and model call.

Off unless an OTLP endpoint is configured (``telemetry.otlp_endpoint`` in gateway.yaml, or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``). Off, the hot path
checks one flag per request and one context variable per step, and the SDK is never imported.

The tree of one request (names as exported)::

    POST /v1/chat/completions          SERVER; parent: the client's ``traceparent``, if any
      gateway.admission                key, body, validation, limits, rates, a slot
      gateway.routing                  route -> variant (or a direct target)
      gateway.retrieval                kNN few-shot exemplars (pipelines that retrieve)
      chat <target>                    CLIENT, one per engine call (ensemble members too);
                                       its context goes upstream as ``traceparent``
      gateway.vote                     the ensemble's vote
      gateway.event_write              the attempt's inference event, queued or committed

Attributes follow OpenTelemetry's GenAI semantic conventions (``gen_ai.*``) plus the
gateway's own (``switchboard.*``). No prompt, message or answer text is ever an attribute.

The active ``Tracing`` rides in a context variable set by the request span, so the steps below
(dispatcher, runner, engines) need no reference to it, and an app with tracing off, or a
background job outside any request, finds none and pays nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagate import get_global_textmap
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.engines.base import Engine
from gateway.events.schema import InferenceEvent

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from gateway.config.schema import TelemetrySpec

#: the app whose request is running, set by the request span (None: tracing is off here)
_ACTIVE: ContextVar[Tracing | None] = ContextVar("switchboard_tracing", default=None)
#: the request's own span, which the event of its last attempt annotates
_REQUEST: ContextVar[Span | None] = ContextVar("switchboard_request_span", default=None)
#: what a step gets when tracing is off: a reusable no-op (``set_attribute`` does nothing)
_OFF: AbstractContextManager[Span] = nullcontext(trace.INVALID_SPAN)
_W3C = TraceContextTextMapPropagator()
_FINISH = re.compile(rb'"finish_reason"\s*:\s*"([a-z_]{1,32})"')
_USAGE = re.compile(rb'"(prompt_tokens|completion_tokens)"\s*:\s*(\d+)')
#: how much of a stream's end is kept to read its finish reasons and usage from
_TAIL = 4096
SCOPE = "switchboard"
ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
#: request fields recorded on a model call's span, by their GenAI attribute names
_SAMPLING = (
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("n", "gen_ai.request.choice.count"),
)


class Tracing:
    """The gateway's tracer, or none (off). One per app, built in its lifespan."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self.tracer: Tracer | None = provider.get_tracer(SCOPE) if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    @classmethod
    def from_config(
        cls, spec: TelemetrySpec | None, env: Mapping[str, str] = os.environ
    ) -> Tracing:
        """On with an OTLP/HTTP exporter when an endpoint is set; else off."""
        endpoint = traces_endpoint(spec.otlp_endpoint if spec is not None else None, env)
        if endpoint is None:
            return cls()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        tracing = cls(_provider(spec))
        tracing.export_to(OTLPSpanExporter(endpoint=endpoint), batch=True)
        return tracing

    def export_to(self, exporter: SpanExporter, *, batch: bool = False) -> None:
        """Send finished spans to ``exporter`` (turns tracing on; tests use an in-memory one)."""
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        if self.provider is None:
            self.provider = _provider(None)
            self.tracer = self.provider.get_tracer(SCOPE)
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)

    def shutdown(self) -> None:
        """Flush and stop the exporters (the lifespan's end)."""
        if self.provider is not None:
            self.provider.shutdown()

    # -- the request span (gateway/api/hot_path.py) ---------------------------------------------

    async def serve(
        self,
        scope: Mapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
        answer: Callable[[Any, Any, Any], Awaitable[None]],
    ) -> None:
        """Run ``answer`` (which sends the whole response, a stream to its end) in a span."""
        assert self.tracer is not None
        parent = _W3C.extract(_AsgiHeaders(scope.get("headers") or ()))
        attributes = {
            "http.request.method": "POST",
            "url.path": str(scope.get("path", "")),
            "gen_ai.operation.name": "chat",
        }
        with self.tracer.start_as_current_span(
            "POST /v1/chat/completions", context=parent, kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            active = _ACTIVE.set(self)
            request = _REQUEST.set(span)

            async def traced_send(message: Any) -> None:
                if message.get("type") == "http.response.start":
                    status = int(message.get("status", 0))
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            try:
                await answer(scope, receive, traced_send)
            finally:
                _REQUEST.reset(request)
                _ACTIVE.reset(active)


def traces_endpoint(configured: str | None, env: Mapping[str, str] = os.environ) -> str | None:
    """The OTLP/HTTP traces URL: the config's, else the standard environment variables'.

    A base URL (``http://collector:4318``) gets ``/v1/traces``, as the OTLP spec says for
    ``OTEL_EXPORTER_OTLP_ENDPOINT``; ``..._TRACES_ENDPOINT`` is taken as the full URL.
    """
    if configured:
        return _with_path(configured)
    full = env.get(ENDPOINT_ENVS[0], "").strip()
    if full:
        return full
    base = env.get(ENDPOINT_ENVS[1], "").strip()
    return _with_path(base) if base else None


def _with_path(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1/traces") else f"{url}/v1/traces"


def _provider(spec: TelemetrySpec | None) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from gateway import __version__

    name = spec.service_name if spec is not None else "switchboard"
    ratio = spec.sample_ratio if spec is not None else 1.0
    resource = Resource.create({"service.name": name, "service.version": __version__})
    return TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(ratio)))


class _AsgiHeaders(dict[str, str]):
    """An ASGI scope's raw headers as the propagator's carrier (lower-case names)."""

    def __init__(self, raw: Any) -> None:
        super().__init__()
        for name, value in raw:
            if name in (b"traceparent", b"tracestate"):
                self[name.decode("latin-1")] = value.decode("latin-1")


# -- steps: called from the dispatcher, the runner, the chat handler and the event log ----------


def span(name: str, attributes: Mapping[str, Any] | None = None) -> AbstractContextManager[Span]:
    """A child span of the current one for a step; a shared no-op when tracing is off."""
    tracing = _ACTIVE.get()
    if tracing is None or tracing.tracer is None:
        return _OFF
    return tracing.tracer.start_as_current_span(name, attributes=attributes)


def step(
    name: str, started: float, attributes: Callable[[], Mapping[str, Any]] | None = None
) -> None:
    """A span for a step that already ran, from ``started`` (``time.perf_counter()``) to now.

    ``attributes`` is a function, so that a caller with tracing off builds nothing.
    """
    tracing = _ACTIVE.get()
    if tracing is None or tracing.tracer is None:
        return
    now_ns = time.time_ns()
    start_ns = now_ns - int((time.perf_counter() - started) * 1e9)
    values = attributes() if attributes is not None else None
    tracing.tracer.start_span(name, start_time=start_ns, attributes=values).end(end_time=now_ns)


def upstream_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """``headers`` plus the current span's ``traceparent`` (the same dict when tracing is off)."""
    if _ACTIVE.get() is None:
        return headers
    carrier = dict(headers)
    get_global_textmap().inject(carrier)
    if "traceparent" not in carrier:  # a process whose global propagator is not W3C's
        _W3C.inject(carrier)
    return carrier


def record_event(event: InferenceEvent, write: Callable[[InferenceEvent], None]) -> None:
    """Write the event (``write``); traced, in a span, and the request span takes its labels."""
    tracing = _ACTIVE.get()
    if tracing is None or tracing.tracer is None:
        write(event)
        return
    attributes = {"switchboard.inference_id": event.id, "switchboard.status": event.status}
    with tracing.tracer.start_as_current_span("gateway.event_write", attributes=attributes):
        write(event)
    request = _REQUEST.get()
    if request is not None and not event.shadow:
        _annotate_request(request, event)


def _annotate_request(span: Span, event: InferenceEvent) -> None:
    """The request span's labels, from its latest attempt (a retry's replace a failure's)."""
    named = event.route or event.adapter or (event.model if event.attempt is not None else None)
    values: dict[str, Any] = {
        "gen_ai.request.model": named,
        "switchboard.route": event.route,
        "switchboard.variant": event.variant,
        "switchboard.target": (event.adapter or event.model) if event.attempt is not None else None,
        "switchboard.pipeline": event.pipeline,
        "switchboard.assignment": event.assignment,
        "switchboard.inference_id": event.id,
        "switchboard.request_id": event.request_id,
        "switchboard.attempts": (event.attempt or 0) + 1,
        "switchboard.status": event.status,
        "switchboard.cost": event.cost,
        "gen_ai.usage.input_tokens": event.prompt_tokens,
        "gen_ai.usage.output_tokens": event.completion_tokens,
        "error.type": event.error_code,
    }
    span.set_attributes({k: v for k, v in values.items() if v is not None})
    if event.status == "error":
        span.set_status(Status(StatusCode.ERROR, event.error_code or "error"))


# -- model calls (gateway/engines/target.py) -----------------------------------------------------


class Target(Protocol):
    """What a model call is made on (``gateway.engines.target.Target``, which calls in here)."""

    @property
    def name(self) -> str: ...
    @property
    def engine(self) -> Engine: ...
    @property
    def upstream_model(self) -> str: ...
    @property
    def base_model(self) -> str: ...
    @property
    def adapter(self) -> str | None: ...


def chat(target: Target, body: dict[str, Any]) -> Awaitable[dict[str, Any]]:
    """The engine's ``chat(body)``: as it is when tracing is off, else in a CLIENT span."""
    tracing = _ACTIVE.get()
    if tracing is None or tracing.tracer is None:
        return target.engine.chat(body)
    return _traced_chat(tracing.tracer, target, body)


def chat_stream(target: Target, body: dict[str, Any]) -> AsyncIterator[bytes]:
    """The engine's ``chat_stream(body)``: as it is when tracing is off, else in a span."""
    tracing = _ACTIVE.get()
    if tracing is None or tracing.tracer is None:
        return target.engine.chat_stream(body)
    return _traced_stream(tracing.tracer, target, body)


async def _traced_chat(tracer: Tracer, target: Target, body: dict[str, Any]) -> dict[str, Any]:
    with tracer.start_as_current_span(
        f"chat {target.name}", kind=SpanKind.CLIENT, attributes=_call_attributes(target, body)
    ) as call:
        try:
            response = await target.engine.chat(body)
        except Exception as exc:
            call.set_attribute("error.type", _error_type(exc))
            raise
        _annotate_response(call, response)
        return response


async def _traced_stream(
    tracer: Tracer, target: Target, body: dict[str, Any]
) -> AsyncIterator[bytes]:
    attributes = {**_call_attributes(target, body), "gen_ai.request.stream": True}
    call = tracer.start_span(f"chat {target.name}", kind=SpanKind.CLIENT, attributes=attributes)
    stream = target.engine.chat_stream(body)
    started = time.perf_counter()
    tail = b""
    try:
        # Current only while the request opens (its headers carry this span): a generator's
        # context is its consumer's, so it must not stay attached across a yield.
        with trace.use_span(call, record_exception=False, set_status_on_exception=False):
            first = await anext(stream, None)
        if first is None:
            return
        call.set_attribute("gen_ai.response.time_to_first_chunk", time.perf_counter() - started)
        tail = first[-_TAIL:]
        yield first
        async for chunk in stream:
            tail = (tail + chunk)[-_TAIL:]
            yield chunk
        _annotate_tail(call, tail)
    except Exception as exc:
        call.set_attribute("error.type", _error_type(exc))
        call.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]
        call.end()


def _call_attributes(target: Target, body: Mapping[str, Any]) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": _provider_name(target),
        "gen_ai.request.model": target.upstream_model,
        "switchboard.target": target.name,
        "switchboard.model": target.base_model,
    }
    if target.adapter is not None:
        attributes["switchboard.adapter"] = target.adapter
    for field, name in _SAMPLING:
        value = body.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attributes[name] = value
    return attributes


def _provider_name(target: Target) -> str:
    module = type(target.engine).__module__
    if "vllm" in module:
        return "vllm"
    if "hosted" in module:
        return "litellm"
    return type(target.engine).__name__.lower()


def _annotate_response(call: Span, response: Mapping[str, Any]) -> None:
    choices = response.get("choices")
    reasons = [
        str(c["finish_reason"])
        for c in (choices if isinstance(choices, list) else [])
        if isinstance(c, dict) and c.get("finish_reason")
    ]
    usage = response.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    values = {
        "gen_ai.response.id": response.get("id"),
        "gen_ai.response.model": response.get("model"),
        "gen_ai.usage.input_tokens": usage.get("prompt_tokens"),
        "gen_ai.usage.output_tokens": usage.get("completion_tokens"),
    }
    call.set_attributes({k: v for k, v in values.items() if isinstance(v, str | int)})
    _finish_reasons(call, reasons)


def _annotate_tail(call: Span, tail: bytes) -> None:
    """A stream's finish reasons and usage (with ``include_usage``), from its last bytes."""
    _finish_reasons(call, [m.decode() for m in _FINISH.findall(tail)])
    for name, value in _USAGE.findall(tail):
        kind = "input" if name == b"prompt_tokens" else "output"
        call.set_attribute(f"gen_ai.usage.{kind}_tokens", int(value))


def _finish_reasons(call: Span, reasons: list[str]) -> None:
    """On the call's span, and gathered on the request's (an ensemble has one per member)."""
    if not reasons:
        return
    call.set_attribute("gen_ai.response.finish_reasons", reasons)
    request = _REQUEST.get()
    if request is None or not request.is_recording():
        return
    seen = getattr(request, "attributes", None) or {}
    before = list(seen.get("gen_ai.response.finish_reasons", ()))
    merged = before + [r for r in reasons if r not in before]
    request.set_attribute("gen_ai.response.finish_reasons", merged)


def _error_type(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and code else type(exc).__name__


def current_trace_id(context: Context | None = None) -> str | None:
    """The current trace's id (32 hex digits), or None outside a sampled span."""
    found = trace.get_current_span(context).get_span_context()
    return format(found.trace_id, "032x") if found.is_valid else None


@contextlib.contextmanager
def active(tracing: Tracing) -> Iterator[None]:
    """Make ``tracing`` the active one outside a request (a test's, or a background job's)."""
    token = _ACTIVE.set(tracing)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
