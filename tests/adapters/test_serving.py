"""Serving adapters through the app: lazy and idempotent loads, LRU within max-loras, restarts,
the admin API, /v1/models, and names that must never reach the filesystem.

The engine is the real ``VLLMEngine`` with a scripted vLLM at its HTTP seam.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.engines.vllm import VLLMEngine
from tests.support.adapter_fakes import ScriptedVLLM, make_adapter
from tests.support.apps import AppFactory
from tests.support.handler_server import serving

LOAD = "/v1/load_lora_adapter"
UNLOAD = "/v1/unload_lora_adapter"
ASK: list[Any] = [{"role": "user", "content": "hi"}]


def config(folder: Path, preload: str = "[]") -> str:
    return f"""
models:
  base:
    engine: vllm
    upstream_model: base-upstream
    launch:
      model: packaged:smollm2-135m-instruct
      args: [--enable-lora, --max-lora-rank=8, --max-loras=2]
adapters:
  folders: ["{folder}"]
  preload: {preload}
"""


class RestartableEngine(VLLMEngine):
    """A URL engine whose generation a test can bump, as the supervisor does on a restart."""

    restarts = 0

    @property
    def generation(self) -> int:
        return self.restarts


@pytest.fixture
def vllm() -> ScriptedVLLM:
    return ScriptedVLLM()


@pytest.fixture
async def engine(vllm: ScriptedVLLM) -> AsyncIterator[RestartableEngine]:
    async with serving(vllm.handle) as url:
        yield RestartableEngine(model_id="base", upstream_model="base-upstream", urls=[url])


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "adapters"
    for name in ("ad-a", "ad-b", "ad-c"):
        make_adapter(folder, name)
    return folder


async def ask(client: openai.AsyncOpenAI, model: str) -> str:
    result = await client.chat.completions.create(model=model, messages=ASK)
    return result.choices[0].message.content or ""


async def test_an_adapter_loads_on_first_use_once(
    gateway: AppFactory, engine: RestartableEngine, vllm: ScriptedVLLM, folder: Path
) -> None:
    async with gateway({"base": engine}, config(folder)) as (client, _):
        assert vllm.paths(LOAD) == []
        answers = await asyncio.gather(*(ask(client, "ad-a") for _ in range(5)))
        assert answers == ["from ad-a"] * 5
        assert vllm.paths(LOAD) == [
            {"lora_name": "ad-a", "lora_path": str((folder / "ad-a").resolve())}
        ]
        # the base model is untouched by adapters
        assert await ask(client, "base") == "from base-upstream"


async def test_models_lists_adapters_with_parent_and_loaded(
    gateway: AppFactory, engine: RestartableEngine, folder: Path
) -> None:
    async with gateway({"base": engine}, config(folder, "[ad-b]")) as (client, raw):
        cards = {m.id: m.model_dump() for m in (await client.models.list()).data}
        assert set(cards) == {"base", "ad-a", "ad-b", "ad-c"}
        assert cards["ad-b"]["parent"] == "base" and cards["ad-b"]["loaded"] is True
        assert cards["ad-a"]["parent"] == "base" and cards["ad-a"]["loaded"] is False
        assert cards["base"]["parent"] is None
        one = (await raw.get("/v1/models/ad-a")).json()
        assert (one["id"], one["parent"], one["loaded"]) == ("ad-a", "base", False)


async def test_least_recently_used_adapter_makes_room(
    gateway: AppFactory, engine: RestartableEngine, vllm: ScriptedVLLM, folder: Path
) -> None:
    async with gateway({"base": engine}, config(folder)) as (client, raw):
        await ask(client, "ad-a")
        await ask(client, "ad-b")
        await ask(client, "ad-a")  # now ad-b is the least recently used
        await ask(client, "ad-c")
        assert set(vllm.loras) == {"ad-a", "ad-c"}
        assert vllm.paths(UNLOAD) == [{"lora_name": "ad-b"}]
        states = {a["id"]: a["state"] for a in (await raw.get("/v1/adapters")).json()["data"]}
        assert states == {"ad-a": "loaded", "ad-b": "available", "ad-c": "loaded"}
        # an evicted adapter is still served: it loads again, pushing out the oldest
        assert await ask(client, "ad-b") == "from ad-b"
        assert set(vllm.loras) == {"ad-c", "ad-b"}


async def test_a_restarted_vllm_gets_its_adapters_back(
    gateway: AppFactory, engine: RestartableEngine, vllm: ScriptedVLLM, folder: Path
) -> None:
    async with gateway({"base": engine}, config(folder, "[ad-a]")) as (client, _):
        assert len(vllm.paths(LOAD)) == 1
        vllm.forget_everything()
        engine.restarts += 1
        assert await ask(client, "ad-a") == "from ad-a"
        assert len(vllm.paths(LOAD)) == 2


async def test_an_adapter_vllm_lost_unseen_loads_again_after_its_404(
    gateway: AppFactory, engine: RestartableEngine, vllm: ScriptedVLLM, folder: Path
) -> None:
    # A vLLM at URLs may restart without the gateway knowing; its 404 is the only sign.
    async with gateway({"base": engine}, config(folder, "[ad-a]")) as (client, _):
        vllm.forget_everything()
        # The 404 makes the gateway load the adapter again, and the retry finds it there.
        assert await ask(client, "ad-a") == "from ad-a"
        assert len(vllm.paths(LOAD)) == 2


async def test_a_name_vllm_already_has_counts_as_loaded(
    gateway: AppFactory, engine: RestartableEngine, vllm: ScriptedVLLM, folder: Path
) -> None:
    # A gateway restarted beside a running vLLM: vLLM answers 400 "already loaded".
    vllm.loras["ad-a"] = "/somewhere"
    async with gateway({"base": engine}, config(folder)) as (client, raw):
        assert await ask(client, "ad-a") == "from ad-a"
        assert (await raw.get("/v1/adapters/ad-a")).json()["state"] == "loaded"


async def test_unload_takes_an_adapter_out_of_service_until_loaded(
    gateway: AppFactory, engine: RestartableEngine, vllm: ScriptedVLLM, folder: Path
) -> None:
    async with gateway({"base": engine}, config(folder, "[ad-a]")) as (client, raw):
        resp = await raw.post("/v1/adapters/ad-a/unload")
        assert resp.status_code == 200 and resp.json()["state"] == "unloaded"
        assert "ad-a" not in vllm.loras
        with pytest.raises(openai.NotFoundError) as info:
            await ask(client, "ad-a")
        assert info.value.code == "model_not_found"
        assert "ad-a" not in {m.id for m in (await client.models.list()).data}
        resp = await raw.post("/v1/adapters/ad-a/load")
        assert resp.status_code == 200
        assert resp.json()["state"] == "loaded" and resp.json()["last_load_s"] >= 0
        assert await ask(client, "ad-a") == "from ad-a"
        # loading again is a no-op, not a second load
        assert (await raw.post("/v1/adapters/ad-a/load")).status_code == 200
        assert len(vllm.paths(LOAD)) == 2


async def test_a_folder_added_while_running_is_served_without_restart(
    gateway: AppFactory, engine: RestartableEngine, folder: Path
) -> None:
    async with gateway({"base": engine}, config(folder)) as (client, raw):
        with pytest.raises(openai.NotFoundError):
            await ask(client, "late")
        make_adapter(folder, "late")
        listed = (await raw.get("/v1/adapters")).json()
        assert "late" in [a["id"] for a in listed["data"]] and listed["problems"] == []
        resp = await raw.post("/v1/adapters/late/load")
        assert resp.status_code == 200, resp.text
        assert await ask(client, "late") == "from late"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/adapters/..%2F..%2Fetc%2Fpasswd/load", 404),
        ("/v1/adapters/%2Fetc%2Fpasswd/load", 404),
        ("/v1/adapters/../../etc/load", 404),
        ("/v1/adapters/..%2Fad-a/load", 404),
        ("/v1/adapters/.hidden/load", 400),
        ("/v1/adapters/..%5Cetc/load", 400),
        ("/v1/adapters/AD-A/load", 400),
        ("/v1/adapters/nope/load", 404),
        ("/v1/adapters/nope/unload", 404),
        ("/v1/adapters/..%2F..%2Fetc/unload", 404),
        ("/v1/adapters/escape/load", 400),
    ],
)
async def test_paths_and_unknown_names_never_reach_vllm(
    gateway: AppFactory,
    engine: RestartableEngine,
    vllm: ScriptedVLLM,
    folder: Path,
    tmp_path: Path,
    path: str,
    status: int,
) -> None:
    async with gateway({"base": engine}, config(folder)) as (client, raw):
        # Planted after start: at startup it would stop the gateway (see the registry tests).
        outside = make_adapter(tmp_path / "outside", "escape")
        (folder / "escape").symlink_to(outside, target_is_directory=True)
        resp = await raw.post(path)
        assert resp.status_code == status, resp.text
        error = resp.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        for model in ("../ad-a", str(folder / "ad-a"), "escape", "ad-a/../ad-b"):
            with pytest.raises(openai.NotFoundError):
                await ask(client, model)
    assert vllm.paths(LOAD) == []


async def test_a_broken_folder_is_reported_not_served(
    gateway: AppFactory, engine: RestartableEngine, vllm: ScriptedVLLM, folder: Path
) -> None:
    async with gateway({"base": engine}, config(folder)) as (_, raw):
        make_adapter(folder, "dora", peft={"use_dora": True})
        listed = (await raw.get("/v1/adapters")).json()
        assert "dora" not in [a["id"] for a in listed["data"]]
        assert any("use_dora" in p for p in listed["problems"])
        resp = await raw.post("/v1/adapters/dora/load")
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "invalid_adapter"
    assert vllm.paths(LOAD) == []


async def test_vllm_refusing_an_adapter_is_a_502_and_takes_no_slot(
    gateway: AppFactory, engine: RestartableEngine, vllm: ScriptedVLLM, folder: Path
) -> None:
    async with gateway({"base": engine}, config(folder)) as (client, raw):
        vllm.fail_load = (500, "LoRA rank 64 is greater than max_lora_rank 8")
        with pytest.raises(openai.InternalServerError) as info:
            await ask(client, "ad-a")
        assert info.value.status_code == 502
        assert "max_lora_rank" in str(info.value.message)
        assert (await raw.get("/v1/adapters/ad-a")).json()["state"] == "available"
        vllm.fail_load = None
        assert await ask(client, "ad-a") == "from ad-a"


async def test_a_bad_adapter_stops_startup_before_any_engine_call(
    gateway: AppFactory, engine: RestartableEngine, vllm: ScriptedVLLM, folder: Path
) -> None:
    from gateway.errors import ConfigError

    make_adapter(folder, "wide", manifest={"rank": 16}, peft={"r": 16})
    with pytest.raises(ConfigError, match="rank: 16 is above --max-lora-rank=8"):
        async with gateway({"base": engine}, config(folder)):
            pass
    assert vllm.calls == []
