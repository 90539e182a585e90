"""Targets: what one model call runs on. A base model, or a LoRA adapter on its base's engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.engines.base import Engine
from gateway.telemetry import tracing


@dataclass(frozen=True)
class Target:
    #: the public name a client used (a model id or an adapter name)
    name: str
    engine: Engine
    #: the name sent upstream as ``model`` (vLLM's served name, or the LoRA's name)
    upstream_model: str
    #: the model id of the base model (``name`` itself for a base model)
    base_model: str
    adapter: str | None = None
    #: awaited before every call, e.g. to load an adapter into vLLM on first use
    prepare: Callable[[], Awaitable[None]] | None = None

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.prepare is not None:
            await self.prepare()
        # In a span when traced; else the engine's own call, untouched.
        return await tracing.chat(self, {**body, "model": self.upstream_model})

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        if self.prepare is not None:
            await self.prepare()
        stream = tracing.chat_stream(self, {**body, "model": self.upstream_model})
        try:
            async for chunk in stream:
                yield chunk
        finally:
            await stream.aclose()  # type: ignore[attr-defined]


def base_target(name: str, engine: Engine) -> Target:
    return Target(name=name, engine=engine, upstream_model=engine.upstream_model, base_model=name)
