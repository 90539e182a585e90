"""The dashboard and the alert rules parse, and name only metrics the gateway exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from gateway.engines.vllm import VLLMEngine
from tests.observability.support import adapter_folder, chat, config, fake_engines, families
from tests.support.apps import AppFactory

DOCS = Path(__file__).resolve().parents[2] / "docs" / "observability"
METRIC = re.compile(r"\bswitchboard_[a-z_]+\b")


def dashboard_expressions() -> list[str]:
    data: dict[str, Any] = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in data["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in data["templating"]["list"] if v["type"] == "query"]
    assert len(data["panels"]) >= 10 and all(exprs)
    return exprs


def rule_expressions() -> list[str]:
    data: dict[str, Any] = yaml.safe_load((DOCS / "prometheus-alerts.yml").read_text())
    rules = [r for group in data["groups"] for r in group["rules"]]
    assert {"SwitchboardHighErrorRate", "SwitchboardEngineDown"} <= {r["alert"] for r in rules}
    assert {"SwitchboardEventsDropped", "SwitchboardSpoolGrowing"} <= {r["alert"] for r in rules}
    return [str(r["expr"]) for r in rules]


async def test_every_metric_named_in_the_dashboard_and_the_rules_exists(
    gateway: AppFactory, tmp_path: Path
) -> None:
    engines = {**fake_engines(), "base": fake_engines()["m1"]}
    # A real vLLM engine (its replica refuses connections) for the per-replica families.
    engines["bad"] = VLLMEngine(model_id="bad", upstream_model="bad", urls=["http://127.0.0.1:9"])
    async with gateway(engines, config(adapter_folder(tmp_path), "http://127.0.0.1:9")) as (
        _,
        raw,
    ):
        # Traffic that makes every labelled family appear (a family with no sample is absent).
        await chat(raw, "qa")
        await chat(raw, "qa", stream=True)
        for _ in range(3):
            await chat(raw, "flaky")
        await chat(raw, "broken")
        gateway.state.metrics.auth_failures.inc()
        gateway.state.metrics.rate_limited.labels("", "rate_limit_exceeded").inc()
        exposition = (await raw.get("/metrics")).text
    exported = families(exposition)
    expressions = dashboard_expressions() + rule_expressions()
    used = {name for expr in expressions for name in METRIC.findall(expr)}
    assert used, "no metric found in the expressions"
    assert used <= exported, f"not exported: {sorted(used - exported)}"
