"""The engine protocol: what the API and pipelines need from anything that serves a model.

An engine receives an OpenAI chat-completions body (a dict, already validated by the API, with
``model`` set to the name the upstream serves) and returns OpenAI-shaped results. Failures are
raised as ``gateway.errors`` types, so callers never see transport exceptions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

EngineState = Literal["stopped", "starting", "ready", "restarting", "failed"]


@dataclass(frozen=True, slots=True)
class EngineHealth:
    """What ``/ready`` reports for one engine."""

    ready: bool
    state: EngineState
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    #: the public model id this engine serves (a key of ``models:`` in gateway.yaml)
    model_id: str
    #: the model name sent upstream (vLLM's served name, or the LiteLLM model string)
    upstream_model: str

    async def start(self) -> None:
        """Acquire resources (connection pools, child processes). Raises on failure to start."""

    async def stop(self) -> None:
        """Release everything ``start`` acquired; safe to call twice."""

    async def health(self) -> EngineHealth:
        """Probe whether the engine answers now."""

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """One non-streaming chat completion, as OpenAI's JSON object."""

    def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        """A streaming chat completion as server-sent-event bytes, ``data: [DONE]`` included.

        Errors before the first chunk are raised from the first ``__anext__``; errors after it
        are raised from the iteration, and the API turns them into an error event.
        """
