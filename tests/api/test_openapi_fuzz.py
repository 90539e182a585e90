"""Schemathesis over the gateway's own OpenAPI schema, in process, on fake engines.

Every operation of ``/openapi.json`` gets generated requests, valid and invalid by the schema,
and every response must be what the schema documents: never a 5xx, and only documented status
codes, content types, headers and bodies. Two gateways are fuzzed: one without API keys, where
requests reach the handlers, and one with keys, where most requests are refused (401/403) and
the refusals must be documented too. The run is bounded and deterministic (a fixed seed and
``deterministic`` generation), so a failure reproduces.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.admission.keys import hash_key
from gateway.app import create_app
from gateway.config.loader import parse_config
from gateway.events.schema import InferenceEvent
from gateway.events.stores import SQLiteStore
from gateway.settings import Settings
from tests.support.fakes import FakeEngine

#: a key with every scope, and a narrow one (inference only) with a small request quota
ADMIN_KEY, NARROW_KEY = "sb-fuzz-admin", "sb-fuzz-narrow"
KEYS = f"""
auth:
  keys:
    - name: admin
      hash: "{hash_key(ADMIN_KEY)}"
      scopes: [inference, feedback, admin]
    - name: narrow
      hash: "{hash_key(NARROW_KEY)}"
      scopes: [inference]
      requests_per_minute: 5
"""
CONFIG = """
limits: {max_body_bytes: 4096, max_n: 4, max_tokens: 256}
models:
  fake: {engine: vllm, urls: ["http://127.0.0.1:9"]}
  other: {engine: vllm, urls: ["http://127.0.0.1:9"]}
routes:
  ab:
    allow_pin: true
    variants:
      a: {target: fake, weight: 1}
      b: {target: other, weight: 1}
    experiment:
      metrics: {correct: {type: boolean}, rating: {type: float}}
      min_samples: 2
"""
#: events already in the database, so feedback and scores can find their inference
SEEDED = ["inf-seed-0", "inf-seed-1"]

# Known names are offered often, so generated requests reach past the 404s and 401s into the
# code that handles real routes, variants, models, inferences and keys.
KNOWN = {
    "routes": ["ab"],
    "variants": ["a", "b"],
    "models": ["fake", "other", "ab"],
    "inferences": SEEDED,
    "metrics": ["correct", "rating", "comment"],
    "keys": [f"Bearer {ADMIN_KEY}", f"Bearer {NARROW_KEY}"],
}
BINDINGS = {
    "path.name": "routes",
    "path.model_id": "models",
    "body.model": "models",
    "body.route": "routes",
    "body.variant": "variants",
    "body.inference_id": "inferences",
    "body.name": "metrics",
    "header.Authorization": "keys",
}
FUZZ = schemathesis.Config.from_dict(
    {
        "seed": 20261121,
        # Per operation and phase; the coverage phase adds the schema's boundary cases.
        "generation": {"max-examples": 40, "deterministic": True},
        "dictionaries": {name: {"values": values} for name, values in KNOWN.items()},
        "parameters": {
            key: {"dictionary": name, "probability": 0.5} for key, name in BINDINGS.items()
        },
    }
)


def build(home: Path, *, keys: bool) -> FastAPI:
    """The gateway on fake engines; with ``keys``, authentication is on."""
    config = parse_config((KEYS if keys else "") + CONFIG, "test.yaml")
    engines = {"fake": FakeEngine("fake"), "other": FakeEngine("other")}
    return create_app(config, Settings(home=home), engines=engines)


# The schema is the app's own: it does not depend on where the app keeps its state.
schema = schemathesis.openapi.from_dict(build(Path("unused"), keys=True).openapi(), config=FUZZ)


@pytest.fixture(scope="module", params=["open", "keys"])
def fuzz_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    home = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    store = SQLiteStore(home / "events.db")
    store.write_events(
        [InferenceEvent(id=i, ts=1.0, route="ab", variant="a", status="ok") for i in SEEDED]
    )
    store.close()
    app = build(home, keys=request.param == "keys")
    yield app
    # Schemathesis starts an app's lifespan on its first request and keeps it running; stop
    # it here, so the event log flushes and closes before its folder goes.
    asgi.shutdown_lifespans()


# Response checks only. Left out on purpose:
# - negative_data_rejection / positive_data_acceptance: they expect a 4xx for every request
#   the schema forbids and a 2xx for every one it allows; the gateway rightly answers 404 to
#   well-formed requests for unknown models, 401 without a key and 413 over the body limit,
#   and passes unknown fields through to the engine (extra="allow", as OpenAI does).
# - use_after_free, ensure_resource_availability, ignored_auth and the other stateful checks:
#   this API creates no resources that a later call could delete, and authentication has its
#   own tests (tests/admission/test_access.py).
# - unsupported_method / allow_header_conformance / missing_required_header: they judge
#   FastAPI's router (405s) and HTTP framing, not the gateway.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@schema.parametrize()
def test_every_operation_answers_as_documented(
    case: schemathesis.Case[Any], fuzz_app: FastAPI
) -> None:
    case.call_and_validate(app=fuzz_app, checks=CHECKS)


# Answers that generated requests reach too rarely to rely on, checked the same way.

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


def call(
    app: FastAPI, path: str, method: str, checks: list[Any] = CHECKS, **parts: Any
) -> schemathesis.Response:
    case = schema[path][method].Case(**parts)
    response: schemathesis.Response = case.call_and_validate(app=app, checks=checks)
    return response


@pytest.mark.parametrize("fuzz_app", ["keys"], indirect=True)
def test_rate_limited_and_refused_answers_are_documented(fuzz_app: FastAPI) -> None:
    narrow = {"Authorization": f"Bearer {NARROW_KEY}"}
    statuses = [
        call(fuzz_app, "/v1/chat/completions", "POST", body=CHAT, headers=narrow).status_code
        for _ in range(7)
    ]
    assert statuses[-1] == 429, statuses  # 5 a minute
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert call(fuzz_app, "/v1/feedback", "POST", body={}, headers=narrow).status_code == 403
    assert call(fuzz_app, "/v1/models", "GET", headers=admin).status_code == 200


@pytest.mark.parametrize("fuzz_app", ["open"], indirect=True)
def test_not_ready_is_a_documented_503(fuzz_app: FastAPI) -> None:
    call(fuzz_app, "/health", "GET")  # the first request starts the lifespan
    state = fuzz_app.state.gateway
    state.engines["other"].ready = False
    try:
        # A 503 is the right answer here: every other check still applies.
        response = call(fuzz_app, "/ready", "GET", checks=CHECKS[1:])
    finally:
        state.engines["other"].ready = True
    assert response.status_code == 503
    assert response.headers["retry-after"] == ["5"]


@pytest.mark.parametrize("fuzz_app", ["open"], indirect=True)
def test_a_stream_answers_as_documented(fuzz_app: FastAPI) -> None:
    response = call(fuzz_app, "/v1/chat/completions", "POST", body={**CHAT, "stream": True})
    assert response.status_code == 200
