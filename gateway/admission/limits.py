"""What one chat request may ask for and hold: the request bounds, the rates, a slot."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from gateway.admission.keys import ApiKey
from gateway.admission.ratelimit import DEFAULT_OUTPUT_RESERVE, ConcurrencyGate, Quota, RateLimiter
from gateway.config.schema import LimitsSpec
from gateway.errors import InvalidRequestError
from gateway.protocol import ChatCompletionRequest, invalid_from_validation
from gateway.routing.context import RequestContext


class Admission:
    """What a request holds while it runs: a concurrency slot and its token reservation.

    Its rates are reserved first (``reserve``), then its slot is taken (``enter``), so a
    key over its rate never holds a slot; ``release`` gives back what it holds, once.
    """

    def __init__(
        self,
        *,
        limiter: RateLimiter,
        gate: ConcurrencyGate,
        limits: LimitsSpec,
        key: ApiKey | None,
        client: str,
    ) -> None:
        self.limiter = limiter
        self.gate = gate
        self.quota = (key.quota if key else None) or Quota(
            limits.requests_per_minute, limits.tokens_per_minute
        )
        # Without keys the client's address is the key, so one client cannot starve the rest.
        self.key = key.name if key else f"address:{client}"
        self.reserved = 0
        self.ctx: RequestContext | None = None
        self._in_gate = False
        self._released = False

    async def reserve(self, tokens: int) -> None:
        self.reserved = await self.limiter.acquire(self.key, self.quota, tokens)

    def enter(self) -> None:
        self.gate.enter()
        self._in_gate = True

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self._in_gate:
            self.gate.leave()
        if self.reserved:
            # Refused before it ran (no slot): its tokens go back whole.
            used = self.ctx.tokens if self.ctx is not None else 0
            self.limiter.settle(self.key, self.reserved, used)


def validate_request(body: dict[str, Any]) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None


def check_limits(chat: ChatCompletionRequest, limits: LimitsSpec) -> None:
    if chat.n is not None and chat.n > limits.max_n:
        raise InvalidRequestError(
            f"'n' is {chat.n}; this gateway allows at most {limits.max_n}.", param="n"
        )
    limit = chat.output_limit
    if limit is not None and limit > limits.max_tokens:
        param = "max_completion_tokens" if chat.max_completion_tokens else "max_tokens"
        raise InvalidRequestError(
            f"'{param}' is {limit}; this gateway allows at most {limits.max_tokens}.",
            param=param,
        )
    if len(chat.messages) > limits.max_messages:
        raise InvalidRequestError(
            f"'messages' has {len(chat.messages)} entries; this gateway allows at most "
            f"{limits.max_messages}.",
            param="messages",
        )
    chars = prompt_chars(chat)
    if chars > limits.max_chars:
        raise InvalidRequestError(
            f"The messages hold {chars} characters; this gateway allows at most "
            f"{limits.max_chars}.",
            param="messages",
        )


def prompt_chars(chat: ChatCompletionRequest) -> int:
    """Characters of text in all messages (images and other parts are bounded by the body)."""
    total = 0
    for message in chat.messages:
        content = message.content
        if isinstance(content, str):
            total += len(content)
        elif content is not None:
            total += sum(len(t) for p in content if isinstance(t := getattr(p, "text", None), str))
    return total


def estimate_tokens(chat: ChatCompletionRequest) -> int:
    """A reservation for the token rate limit: about 4 characters a token, plus the output."""
    output = chat.output_limit or DEFAULT_OUTPUT_RESERVE
    return prompt_chars(chat) // 4 + output * (chat.n or 1)
