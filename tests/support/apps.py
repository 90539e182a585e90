"""In-process gateways around scripted engines: the app, an openai client and a raw client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import openai

from gateway.app import create_app
from gateway.config.loader import parse_config
from gateway.engines.base import Engine
from gateway.settings import Settings
from tests.support.fakes import FakeEngine

CONFIG = """
limits: {max_body_bytes: 4096, max_n: 4, max_tokens: 256}
models:
  fake: {engine: vllm, urls: ["http://127.0.0.1:9"]}
"""

Clients = tuple[openai.AsyncOpenAI, httpx.AsyncClient]
AppFactory = Callable[..., AbstractAsyncContextManager[Clients]]


def app_factory(tmp_path: Path) -> AppFactory:
    """Build the app around given engines; yield an openai client and a raw httpx client."""

    @asynccontextmanager
    async def make(
        engines: dict[str, Engine] | None = None, config: str = CONFIG
    ) -> AsyncIterator[tuple[openai.AsyncOpenAI, httpx.AsyncClient]]:
        engines = engines if engines is not None else {"fake": FakeEngine()}
        settings = Settings(home=tmp_path / "home")
        app = create_app(parse_config(config, "test.yaml"), settings, engines=engines)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as raw:
                client = openai.AsyncOpenAI(
                    base_url="http://gw/v1", api_key="unused", http_client=raw, max_retries=0
                )
                yield client, raw

    return make
