"""A scripted engine for unit tests of the API's logic and for fault injection.

Never the only test of a feature: the integration layer runs the same paths on the real vLLM.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.engines.base import EngineHealth
from gateway.errors import GatewayError


def completion(text: str, model: str = "upstream-fake") -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def sse(pieces: list[str], model: str = "upstream-fake") -> list[bytes]:
    chunks = []
    for piece in pieces:
        chunk = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
        }
        chunks.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
    return chunks


class FakeEngine:
    def __init__(
        self,
        model_id: str = "fake",
        *,
        text: str = "hello there",
        upstream_model: str = "upstream-fake",
        fail_with: GatewayError | None = None,
        fail_stream_after: int | None = None,
        ready: bool = True,
    ) -> None:
        self.model_id = model_id
        self.upstream_model = upstream_model
        self.text = text
        self.fail_with = fail_with
        self.fail_stream_after = fail_stream_after
        self.ready = ready
        self.bodies: list[dict[str, Any]] = []
        self.started = False
        self.stream_closed = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def health(self) -> EngineHealth:
        return EngineHealth(self.ready, "ready" if self.ready else "restarting")

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        self.bodies.append(body)
        if self.fail_with is not None:
            raise self.fail_with
        return completion(self.text, self.upstream_model)

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        self.bodies.append(body)
        try:
            if self.fail_with is not None and self.fail_stream_after is None:
                raise self.fail_with
            for i, chunk in enumerate(sse(self.text.split(" "), self.upstream_model)):
                if self.fail_stream_after is not None and i == self.fail_stream_after:
                    assert self.fail_with is not None
                    raise self.fail_with
                yield chunk
            yield b"data: [DONE]\n\n"
        finally:
            self.stream_closed = True
