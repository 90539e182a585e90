"""The console: static pages under /ui, shipped in the package (gateway/ui/), no CDN.

The pages hold no data: they read the admin JSON endpoints with the key the user enters (kept
in the browser's sessionStorage), so serving them needs no key. Only files that exist in the
package folder are served, by a name that cannot leave it.
"""

from __future__ import annotations

import re
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, RedirectResponse, Response

from gateway.api.deps import get_state
from gateway.errors import NotFoundError
from gateway.state import GatewayState

router = APIRouter(include_in_schema=False)

# Each part starts with a letter or digit, so neither ``..`` nor a hidden file can be named.
_ASSET = re.compile(
    r"^(?:[a-z0-9][a-z0-9_-]*/)*[a-z0-9][a-z0-9_.-]*\.(?:js|css|html|svg|png|txt|md)$", re.I
)
_TYPES = {
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "html": "text/html; charset=utf-8",
    "svg": "image/svg+xml",
    "png": "image/png",
    "txt": "text/plain; charset=utf-8",
    "md": "text/plain; charset=utf-8",
}
# Same origin only: nothing may be fetched, run or framed from elsewhere, so the page works
# offline and a key typed into it cannot be sent anywhere but this gateway.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _root() -> Traversable:
    return files("gateway").joinpath("ui")


def _asset(path: str) -> Response:
    resource = _root()
    if _ASSET.match(path) and ".." not in path:
        for part in path.split("/"):
            resource = resource.joinpath(part)
        if resource.is_file():
            media = _TYPES[path.rsplit(".", 1)[1].lower()]
            return Response(resource.read_bytes(), media_type=media, headers=_HEADERS)
    raise NotFoundError(f"No console file '{path}'.", code="not_found")


@router.get("/ui")
async def console() -> Response:
    return _asset("index.html")


@router.get("/ui/session")
async def console_session(state: Annotated[GatewayState, Depends(get_state)]) -> JSONResponse:
    """Whether the pages need a key: with keys configured they ask for one before their first
    read, instead of learning it from a refusal."""
    return JSONResponse({"keys": state.keyring.enabled}, headers=_HEADERS)


@router.get("/ui/")
async def console_slash() -> Response:
    return RedirectResponse("/ui", status_code=308)


@router.get("/ui/{path:path}")
async def console_asset(path: str) -> Response:
    return _asset(path)
