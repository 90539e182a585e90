"""Who may call what: the API key's scope each endpoint needs.

Authentication itself is ``gateway.admission.keys.KeyRing``; here the scopes meet the routers. The
``bearer`` scheme only documents the header in the OpenAPI schema: the key ring checks it, so
the errors are OpenAI's (401 for a missing or wrong key, 403 for a missing scope).
"""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPBearer

from gateway.admission.keys import ApiKey
from gateway.config.schema import Scope
from gateway.errors import AuthenticationError
from gateway.state import GatewayState

#: the security scheme's name in the OpenAPI schema
BEARER = "HTTPBearer"
bearer = HTTPBearer(
    auto_error=False, scheme_name=BEARER, description="an API key, when the gateway has keys"
)


def require(scope: Scope) -> DependsParam:
    """A router dependency that admits keys with ``scope`` (anyone when auth is off)."""

    async def check(request: Request) -> None:
        authenticate(request.app.state.gateway, request, scope)

    dependency: DependsParam = Depends(check)
    return dependency


def authenticate(state: GatewayState, request: Request, scope: Scope) -> ApiKey | None:
    """The request's key; failures are counted per client address and throttled (429)."""
    client = request.client.host if request.client else "unknown"
    return authenticate_header(state, request.headers.get("authorization"), client, scope)


def authenticate_header(
    state: GatewayState, authorization: str | None, client: str, scope: Scope
) -> ApiKey | None:
    limit = state.config.limits.auth_failures_per_minute
    try:
        return state.keyring.authenticate(authorization, scope, client, limit)
    except AuthenticationError:
        state.metrics.auth_failures.inc()
        raise


def scoped(scope: Scope) -> list[DependsParam]:
    """Dependencies for ``include_router``: the documented bearer header and the scope check."""
    return [Depends(bearer), require(scope)]
