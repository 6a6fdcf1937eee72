"""Who may talk to the server.

Bound to loopback, the server needs no token but checks the Host header (a page on another site that
rebinds its DNS name to 127.0.0.1 is refused). Bound to any other address it needs a token (`--token`,
`CINETUNE_TOKEN`, or one generated and printed once), checked on every request, the event stream and the
media files included: as `Authorization: Bearer`, the `cinetune_token` cookie (set when a page is opened
with `?token=`), or the `token` query parameter (what <video> and EventSource can send).
"""

from __future__ import annotations

import ipaddress
import os
import secrets

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

COOKIE = "cinetune_token"
_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def is_loopback(host: str) -> bool:
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def choose_token(host: str, given: str | None) -> tuple[str | None, bool]:
    """(token, generated): the given or CINETUNE_TOKEN token; a new one for a non-loopback host; else None."""
    token = given or os.environ.get("CINETUNE_TOKEN") or None
    if token is None and not is_loopback(host):
        return secrets.token_urlsafe(24), True
    return token, False


def _offered(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.query_params.get("token") or request.cookies.get(COOKIE)


class TokenMiddleware(BaseHTTPMiddleware):
    def __init__(self, app, token: str | None, loopback_only: bool) -> None:
        super().__init__(app)
        self.token = token
        self.loopback_only = loopback_only

    async def dispatch(self, request: Request, call_next) -> Response:
        host = (request.headers.get("host") or "").rsplit(":", 1)[0]
        if self.loopback_only and self.token is None and not is_loopback(host):
            return JSONResponse({"error": f"host '{host}' refused: the server is bound to loopback"}, 403)
        if self.token is not None:
            offered = _offered(request)
            if offered is None or not secrets.compare_digest(offered.encode(), self.token.encode()):
                return JSONResponse({"error": "a valid token is required (?token=... or Bearer)"}, 401)
        response = await call_next(request)
        if self.token is not None and request.query_params.get("token"):
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
        return response
