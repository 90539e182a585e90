"""Acting on the decision through the API: automatic promotion of a winner, rollback of a
guardrail breach, the admin's promote and undo, every action recorded and shown, and actions
that survive a restart (two app instances on one SQLite file)."""

from __future__ import annotations

from typing import Any

import httpx

from gateway.errors import EngineUnavailableError
from gateway.events.stores import SQLiteStore
from gateway.experiments.promotion import Promotions
from gateway.experiments.report import decision_lines, to_html
from gateway.routing.assignment import Route
from tests.support.apps import InProcessGateway
from tests.support.fakes import FakeEngine

ASK: list[Any] = [{"role": "user", "content": "hi"}]


def config(experiment: str) -> str:
    return f"""
models:
  m1: {{engine: vllm, urls: ["http://127.0.0.1:9"]}}
  m2: {{engine: vllm, urls: ["http://127.0.0.1:9"]}}
reliability: {{max_attempts: 1, cooldown_failures: 1000}}
routes:
  qa:
    sticky_key: user
    variants:
      first: {{target: m1, weight: 50}}
      second: {{target: m2, weight: 50}}
    experiment: {experiment}
"""


WINNER = config(
    "{metrics: {correct: {type: boolean}}, min_samples: 20, expected_samples: 100, "
    "on_decision: promote}"
)
BREACH = config(
    "{metrics: {correct: {type: boolean}}, min_samples: 20, expected_samples: 100, "
    "guardrails: {error_rate: {margin: 0.05}}, on_guardrail_breach: rollback}"
)


class Flaky(FakeEngine):
    """Fails every other call (retryably; max_attempts 1, so the request fails)."""

    calls = 0

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        if self.calls % 2:
            raise EngineUnavailableError("engine down")
        return await super().chat(body)


def engines(m2: FakeEngine | None = None) -> dict[str, Any]:
    return {"m1": FakeEngine("m1"), "m2": m2 or FakeEngine("m2")}


async def traffic(
    raw: httpx.AsyncClient, users: range, correct: dict[str, float] | None = None
) -> dict[str, int]:
    """One request per user, each answered one scored ``correct`` (a share ``correct[variant]``
    of them, deterministically); returns the count of each assignment."""
    seen: dict[str, int] = {}
    for u in users:
        resp = await raw.post(
            "/v1/chat/completions", json={"model": "qa", "messages": ASK, "user": f"u{u}"}
        )
        variant = resp.headers["x-switchboard-variant"]
        seen[variant] = seen.get(variant, 0) + 1
        if correct is not None and resp.status_code == 200:
            k, rate = seen[variant], correct[variant]
            value = int(k * rate) > int((k - 1) * rate)  # exactly ``rate`` of them, spread out
            sent = await raw.post(
                "/v1/feedback",
                json={
                    "inference_id": resp.headers["x-switchboard-inference-id"],
                    "name": "correct",
                    "value": bool(value),
                },
            )
            assert sent.status_code == 201, sent.text
    return seen


def route(gateway: InProcessGateway) -> Route:
    live = gateway.state.router.get("qa")
    assert live is not None
    return live


async def test_a_winner_is_promoted_automatically_and_the_admin_can_undo(
    gateway: InProcessGateway,
) -> None:
    async with gateway(engines(), WINNER) as (_client, raw):
        await traffic(raw, range(300), {"first": 0.3, "second": 0.8})
        report = (await raw.get("/v1/experiments/qa")).json()
        assert report["decision"]["status"] == "winner"
        assert report["decision"]["winner"] == "second"
        assert report["promoted"] == "second"
        [action] = report["actions"]
        assert action["action"] == "promote" and action["actor"] == "auto"
        assert action["variant"] == "second" and action["undone"] is False
        assert action["reason"] == report["decision"]["reason"]
        assert "promote, auto" in report["verdict"]
        assert route(gateway).promoted is not None
        compared = {n: v["n"] for n, v in report["variants"].items()}

        # Promoted traffic stays out of the comparison.
        after = await traffic(raw, range(300, 340))
        assert after == {"second": 40}
        again = (await raw.get("/v1/experiments/qa")).json()
        assert {n: v["n"] for n, v in again["variants"].items()} == compared
        assert again["apart"]["promoted"] == {"second": 40}
        assert len(again["actions"]) == 1  # evaluated again: not taken twice

        undone = await raw.post("/v1/experiments/qa/undo", json={"reason": "checking by hand"})
        assert undone.status_code == 200, undone.text
        assert undone.json()["share"] == {"first": 0.5, "second": 0.5}
        assert route(gateway).promoted is None
        final = (await raw.get("/v1/experiments/qa")).json()
        # Still a winner, but after an undo the admin decides: no automatic action again.
        assert final["decision"]["status"] == "winner" and final["promoted"] is None
        kinds = [(a["action"], a["actor"], a["undone"]) for a in final["actions"]]
        assert kinds == [("promote", "auto", True), ("undo", "admin", False)]
        assert final["actions"][1]["undoes"] == final["actions"][0]["id"]
        assert final["actions"][1]["reason"] == "checking by hand"
        lines = decision_lines(final)
        assert any("promote 'second' by auto" in line and "(undone)" in line for line in lines)
        assert "by admin: checking by hand" in to_html([final])

        nothing = await raw.post("/v1/experiments/qa/undo")
        assert nothing.status_code == 400
        assert "no promotion to undo" in nothing.json()["error"]["message"]


async def test_a_guardrail_breach_is_rolled_back_to_the_control(
    gateway: InProcessGateway,
) -> None:
    async with gateway(engines(Flaky("m2")), BREACH) as (_client, raw):
        await traffic(raw, range(300), {"first": 0.5, "second": 0.5})
        report = (await raw.get("/v1/experiments/qa")).json()
        assert report["decision"]["status"] == "guardrail_breach"
        assert report["promoted"] == "first"  # the control: no per-variant redirect
        [action] = report["actions"]
        assert (action["action"], action["actor"], action["variant"]) == (
            "rollback",
            "auto",
            "first",
        )
        assert "guardrail breached" in action["reason"]
        assert await traffic(raw, range(300, 320)) == {"first": 20}


async def test_report_only_experiments_take_no_action(gateway: InProcessGateway) -> None:
    plain = WINNER.replace(", on_decision: promote", "")
    async with gateway(engines(), plain) as (_client, raw):
        await traffic(raw, range(300), {"first": 0.3, "second": 0.8})
        report = (await raw.get("/v1/experiments/qa")).json()
        assert report["decision"]["status"] == "winner"
        assert report["promoted"] is None and report["actions"] == []


async def test_actions_survive_a_restart_and_reach_another_instance(
    gateway: InProcessGateway, tmp_path: Any
) -> None:
    other = InProcessGateway(tmp_path)  # the same home: one SQLite file
    async with gateway(engines(), WINNER) as (_client, raw):
        promoted = await raw.post("/v1/experiments/qa/promote", json={"variant": "first"})
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["action"]["actor"] == "admin"
        async with other(engines(), WINNER) as (_client2, raw2):
            # Started after the promotion: loaded in its lifespan, before any evaluation.
            assert route(other).promoted is not None
            assert await traffic(raw2, range(10)) == {"first": 10}
            assert (await raw.post("/v1/experiments/qa/undo")).status_code == 200
            # The other instance follows the undo when it next evaluates the route.
            report = (await raw2.get("/v1/experiments/qa")).json()
            assert report["promoted"] is None and route(other).promoted is None
            assert [a["action"] for a in report["actions"]] == ["promote", "undo"]
    async with gateway(engines(), WINNER) as (_client, raw):
        assert route(gateway).promoted is None
        report = (await raw.get("/v1/experiments/qa")).json()
        assert [(a["action"], a["actor"]) for a in report["actions"]] == [
            ("promote", "admin"),
            ("undo", "admin"),
        ]


async def test_gateway_report_acts_in_the_store_and_the_gateway_follows(
    gateway: InProcessGateway, tmp_path: Any
) -> None:
    async with gateway(engines(), WINNER) as (_client, raw):
        await traffic(raw, range(300), {"first": 0.3, "second": 0.8})
        await gateway.state.events.flush()
        spec = route(gateway).spec
        # What `gateway report` does: the store only, no router.
        store = SQLiteStore(tmp_path / "home" / "events.db")
        try:
            offline = Promotions(store).report("qa", spec)
            assert offline["promoted"] == "second"
            assert Promotions(store).report("qa", spec)["actions"] == offline["actions"]
        finally:
            store.close()
        assert route(gateway).promoted is None  # not yet: it has not evaluated the route
        report = (await raw.get("/v1/experiments/qa")).json()
        assert report["promoted"] == "second" and route(gateway).promoted is not None
        assert len(report["actions"]) == 1
