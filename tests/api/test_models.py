"""GET /v1/models: base models, adapters and routes, each callable by the name it lists."""

from __future__ import annotations

import pytest

from tests.support.apps import InProcessGateway
from tests.support.fakes import FakeEngine

CONFIG = """
models:
  m1: {engine: vllm, urls: ["http://127.0.0.1:9"]}
  m2: {engine: vllm, urls: ["http://127.0.0.1:9"]}
routes:
  qa:
    variants:
      first: {target: m1, weight: 3}
      second: {target: m2, pipeline: plain, weight: 1}
"""


def engines() -> dict[str, FakeEngine]:
    return {"m1": FakeEngine("m1"), "m2": FakeEngine("m2")}


async def test_routes_are_listed_with_their_variants(gateway: InProcessGateway) -> None:
    async with gateway(engines(), CONFIG) as (client, _raw):
        listed = {model.id: model for model in (await client.models.list()).data}
        assert set(listed) == {"m1", "m2", "qa"}
        route = listed["qa"].model_dump()
        assert route["switchboard"] == {
            "kind": "route",
            "promoted": None,
            "variants": {
                "first": {"target": "m1", "pipeline": "plain", "weight": 3.0},
                "second": {"target": "m2", "pipeline": "plain", "weight": 1.0},
            },
        }
        assert listed["m1"].model_dump()["switchboard"] == {"kind": "model"}
        # The official client retrieves a route like any model.
        retrieved = await client.models.retrieve("qa")
        assert retrieved.id == "qa"


async def test_created_is_when_the_gateway_started_not_the_request(
    gateway: InProcessGateway,
) -> None:
    async with gateway(engines(), CONFIG) as (client, raw):
        started = int(gateway.state.started_at)
        first = [m.created for m in (await client.models.list()).data]
        again = (await raw.get("/v1/models/qa")).json()["created"]
        assert set(first) == {started} and again == started


async def test_an_unknown_model_is_a_404_in_openais_shape(gateway: InProcessGateway) -> None:
    async with gateway(engines(), CONFIG) as (_client, raw):
        resp = await raw.get("/v1/models/nope")
        assert resp.status_code == 404
        assert resp.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("role", ["user", "system", "developer"])
async def test_a_message_without_content_is_refused_naming_it(
    gateway: InProcessGateway, role: str
) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": role}]
    async with gateway(engines(), CONFIG) as (_client, raw):
        resp = await raw.post("/v1/chat/completions", json={"model": "m1", "messages": messages})
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert error["param"] == "messages[1].content"
        assert f"a {role} message needs content" in error["message"]
        # An assistant turn may carry only tool calls: no content is fine there.
        ok = [{"role": "user", "content": "hi"}, {"role": "assistant"}]
        fine = await raw.post("/v1/chat/completions", json={"model": "m1", "messages": ok})
        assert fine.status_code == 200


ALIASED = (
    CONFIG
    + """
aliases:
  gpt-4o-mini: qa
  gpt-4o: m2
"""
)


async def test_an_alias_calls_what_it_names_and_is_listed(gateway: InProcessGateway) -> None:
    async with gateway(engines(), ALIASED) as (client, _raw):
        reply = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], user="u1"
        )
        assert reply.headers["x-switchboard-route"] == "qa"
        direct = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
        assert direct.choices[0].message.content
        listed = {m.id: m.model_dump() for m in (await client.models.list()).data}
        assert listed["gpt-4o-mini"]["switchboard"]["alias_of"] == "qa"
        assert listed["gpt-4o"]["switchboard"] == {"kind": "model", "alias_of": "m2"}
