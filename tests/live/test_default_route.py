"""The embedded default's `medqa` route on the real gateway: prompted against tuned."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import openai
import pytest

from tests.conftest import RunningGateway

pytestmark = pytest.mark.slow

QUESTION = "Which organ produces insulin?\nA. Liver\nB. Pancreas\nC. Spleen\nD. Kidney"


def test_users_split_between_prompted_and_tuned_and_the_report_shows_both(
    gateway_server: RunningGateway, client: openai.OpenAI
) -> None:
    # The session's gateway is shared: other tests' traffic on medqa is counted as before.
    def units() -> dict[str, int]:
        report = httpx.get(f"{gateway_server.url}/v1/experiments/medqa", timeout=60).json()
        return {v: report["variants"][v]["n"] for v in ("prompted", "tuned")}

    before = units()
    seen: dict[str, str] = {}
    for i in range(8):
        resp = client.chat.completions.with_raw_response.create(
            model="medqa",
            messages=[{"role": "user", "content": QUESTION}],
            user=f"default-route-{i}",
        )
        completion = resp.parse()
        variant = resp.headers["x-switchboard-variant"]
        extension = completion.model_dump()["switchboard"]
        assert extension["variant"] == variant and extension["route"] == "medqa"
        if variant == "prompted":
            assert extension["pipeline"] == "medprompt"
            assert sum(extension["votes"].values()) == 5
            assert extension["answer"] in "ABCD"
        else:
            assert extension["pipeline"] == "plain"
            assert completion.model == "mmlu-med-demo"
        seen[f"default-route-{i}"] = variant
        feedback = httpx.post(
            f"{gateway_server.url}/v1/feedback",
            json={
                "inference_id": resp.headers["x-switchboard-inference-id"],
                "name": "correct",
                "value": i % 2 == 0,
            },
        )
        assert feedback.status_code == 201
    # Deterministic for these user names and the route's salt.
    assert sorted(set(seen.values())) == ["prompted", "tuned"]

    report = httpx.get(f"{gateway_server.url}/v1/experiments/medqa", timeout=60).json()
    counts = {v: report["variants"][v]["n"] for v in ("prompted", "tuned")}
    # Each new sticky user is one new unit of the variant it was assigned.
    added = {v: counts[v] - before[v] for v in counts}
    assert added == {v: list(seen.values()).count(v) for v in ("prompted", "tuned")}
    assert report["verdict"].startswith("Not enough data yet")

    env = {**os.environ, "GATEWAY_HOME": str(gateway_server.home)}
    cli = subprocess.run(
        [sys.executable, "-m", "gateway", "report", "--route", "medqa", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    from_cli = json.loads(cli.stdout)[0]
    assert {v: from_cli["variants"][v]["n"] for v in counts} == counts
