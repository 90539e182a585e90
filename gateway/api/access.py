"""Who may call what: the API key's scope each endpoint needs.

Authentication itself is ``gateway.admission.keys.KeyRing``; here the scopes meet the routers. The
``bearer`` scheme only documents the header in the OpenAPI schema: the key ring checks it, so
the errors are OpenAI's (401 for a missing or wrong key, 403 for a missing scope).
"""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPBearer

from gateway.config.schema import Scope

#: the security scheme's name in the OpenAPI schema
BEARER = "HTTPBearer"
bearer = HTTPBearer(
    auto_error=False, scheme_name=BEARER, description="an API key, when the gateway has keys"
)


def require(scope: Scope) -> DependsParam:
    """A router dependency that admits keys with ``scope`` (anyone when auth is off)."""

    async def check(request: Request) -> None:
        keyring = request.app.state.gateway.keyring
        keyring.authenticate(request.headers.get("authorization"), scope)

    dependency: DependsParam = Depends(check)
    return dependency


def scoped(scope: Scope) -> list[DependsParam]:
    """Dependencies for ``include_router``: the documented bearer header and the scope check."""
    return [Depends(bearer), require(scope)]
