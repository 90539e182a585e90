"""API keys: stored as SHA-256 hashes, each with scopes, checked once per request.

A key in ``gateway.yaml`` is given by its hash (``gateway keys hash`` prints it) or by the name
of an environment variable that holds it, hashed at load. The plain key is never stored, logged
or written to an event; requests are matched by the hash of the presented key.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.admission.ratelimit import AuthThrottle, Quota
from gateway.config.schema import AuthSpec, Scope
from gateway.errors import AuthenticationError, PermissionDeniedError

SCOPES: tuple[Scope, ...] = ("inference", "feedback", "admin")
HASH_PREFIX = "sha256:"
#: the name of the key given by GATEWAY_API_KEY (all scopes)
ENV_KEY_NAME = "env"


def hash_key(key: str) -> str:
    return HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "sb-" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ApiKey:
    name: str
    key_hash: str
    scopes: frozenset[Scope]
    #: overrides of the gateway-wide per-key limits (None: use ``limits``)
    quota: Quota | None = None


class KeyRing:
    """The keys a gateway accepts. Empty: authentication is off."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._by_hash = {k.key_hash: k for k in keys}
        #: failed authentications, counted and throttled per client address
        self.throttle = AuthThrottle()

    @classmethod
    def from_config(cls, spec: AuthSpec, env_key: str | None = None) -> KeyRing:
        """The configured keys, plus ``env_key`` (GATEWAY_API_KEY) with every scope."""
        keys = []
        for key in spec.keys:
            plain = key_from_env(key.env) if key.env else None
            key_hash = key.hash or (hash_key(plain) if plain else None)
            if key_hash is None:  # phase 2 of the config check reports an unset variable
                continue
            quota = None
            if key.requests_per_minute or key.tokens_per_minute:
                quota = Quota(key.requests_per_minute, key.tokens_per_minute)
            keys.append(ApiKey(key.name, key_hash, frozenset(key.scopes), quota))
        if env_key:
            keys.append(ApiKey(ENV_KEY_NAME, hash_key(env_key), frozenset(SCOPES)))
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._by_hash)

    def authenticate(
        self,
        authorization: str | None,
        scope: Scope,
        client: str | None = None,
        failures_per_minute: float = 20,
    ) -> ApiKey | None:
        """The key behind ``Authorization: Bearer ...``; 401 or 403 errors when refused.

        With ``client`` (the peer's address), failures are counted and throttled: 429 once
        the address has failed ``failures_per_minute`` times.
        """
        if not self.enabled:
            return None
        if client is not None:
            self.throttle.check(client)
        try:
            if not authorization or not authorization.lower().startswith("bearer "):
                raise AuthenticationError(
                    "Missing API key: send it as 'Authorization: Bearer <key>'.",
                    code="missing_api_key",
                )
            key = self._by_hash.get(hash_key(authorization[7:].strip()))
            if key is None:
                raise AuthenticationError("Invalid API key.")
        except AuthenticationError:
            if client is not None:
                self.throttle.failed(client, failures_per_minute)
            raise
        if scope not in key.scopes:
            raise PermissionDeniedError(
                f"This API key lacks the '{scope}' scope.", code="insufficient_scope"
            )
        return key


def key_from_env(variable: str) -> str | None:
    value = os.environ.get(variable)
    return value.strip() if value else None
