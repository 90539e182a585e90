"""What the observability tests share: a known mix of traffic, and readers for /metrics."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway.errors import EngineError, EngineUnavailableError
from tests.support.adapter_fakes import make_adapter
from tests.support.fakes import FakeEngine

ASK: list[Any] = [{"role": "user", "content": "hi there, secret prompt 7f3a"}]
#: a phrase of the prompt that must appear in no log line and no span attribute
PROMPT_MARK = "secret prompt 7f3a"


def config(adapters: Path, vllm_url: str) -> str:
    return f"""
limits: {{max_body_bytes: 65536, max_n: 4, max_tokens: 256}}
reliability: {{cooldown_failures: 2, cooldown_s: 600}}
models:
  m1:
    engine: vllm
    urls: ["http://127.0.0.1:9"]
    pricing: {{prompt_per_1m: 1000, completion_per_1m: 2000}}
  m2: {{engine: vllm, urls: ["http://127.0.0.1:9"]}}
  bad: {{engine: vllm, urls: ["http://127.0.0.1:9"]}}
  broken: {{engine: vllm, urls: ["http://127.0.0.1:9"]}}
  base:
    engine: vllm
    upstream_model: base-upstream
    launch:
      model: packaged:smollm2-135m-instruct
      args: [--enable-lora, --max-lora-rank=8, --max-loras=1]
adapters:
  folders: ["{adapters}"]
routes:
  qa:
    variants:
      first: {{target: m1, weight: 100}}
  flaky:
    variants:
      shaky: {{target: bad, weight: 100}}
      steady: {{target: m2, weight: 0}}
    fallback: [steady]
"""


def adapter_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "adapters"
    for name in ("ad-a", "ad-b"):
        make_adapter(folder, name, base="base")
    return folder


def fake_engines() -> dict[str, Any]:
    broken = EngineError("the engine broke")
    broken.retryable = False  # one attempt, one error: no retries to count
    return {
        "m1": FakeEngine("m1", text="from m1"),
        "m2": FakeEngine("m2", text="from m2"),
        "bad": FakeEngine("bad", fail_with=EngineUnavailableError("bad is down")),
        "broken": FakeEngine("broken", fail_with=broken),
    }


async def chat(raw: httpx.AsyncClient, model: str, **extra: Any) -> httpx.Response:
    return await raw.post("/v1/chat/completions", json={"model": model, "messages": ASK, **extra})


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(exposition: str) -> Samples:
    """Every sample of the exposition, by name and label set."""
    found: Samples = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    """The sum over the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and wanted <= ls)


def families(exposition: str) -> set[str]:
    """The metric names of the exposition, as PromQL names them (samples included)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def labels_of(found: Samples, name: str) -> list[Mapping[str, str]]:
    return [dict(ls) for (n, ls) in found if n == name]
