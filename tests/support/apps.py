"""In-process gateways around scripted engines: the app, an openai client and a raw client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import openai
from fastapi import FastAPI

from gateway.app import create_app
from gateway.config.loader import parse_config
from gateway.engines.base import Engine
from gateway.settings import Settings
from gateway.state import GatewayState
from tests.support.fakes import FakeEngine

CONFIG = """
limits: {max_body_bytes: 4096, max_n: 4, max_tokens: 256}
models:
  fake: {engine: vllm, urls: ["http://127.0.0.1:9"]}
"""

Clients = tuple[openai.AsyncOpenAI, httpx.AsyncClient]


class InProcessGateway:
    """Builds the app around given engines; ``state`` is what its lifespan built.

    ``async with gateway(engines, config) as (client, raw)`` yields an openai client and a raw
    httpx client on the in-process app (no sockets).
    """

    def __init__(self, tmp_path: Path) -> None:
        self.home = tmp_path / "home"
        self._app: FastAPI | None = None

    @property
    def state(self) -> GatewayState:
        assert self._app is not None, "read the state inside `async with gateway(...)`"
        state: GatewayState = self._app.state.gateway
        return state

    @asynccontextmanager
    async def __call__(
        self, engines: Mapping[str, Engine] | None = None, config: str = CONFIG
    ) -> AsyncIterator[Clients]:
        engines = engines if engines is not None else {"fake": FakeEngine()}
        app = create_app(
            parse_config(config, "test.yaml"), Settings(home=self.home), engines=engines
        )
        async with app.router.lifespan_context(app):
            self._app = app
            transport = httpx.ASGITransport(app=app)
            try:
                async with httpx.AsyncClient(transport=transport, base_url="http://gw") as raw:
                    client = openai.AsyncOpenAI(
                        base_url="http://gw/v1", api_key="unused", http_client=raw, max_retries=0
                    )
                    yield client, raw
            finally:
                self._app = None


AppFactory = InProcessGateway
