"""API keys: checked once per request, and before the body of a request is read.

Without the middleware a client with no key could make the server receive and buffer a whole
upload (up to the body limit, for up to the upload timeout) before being told 401: a cheap way to
fill its memory. :class:`AuthenticateBeforeBody` answers such a request from its headers alone and
closes the connection; the key's record is kept for the route's dependency. Before answering it
reads and drops what of the body arrives within a second, up to 1 MiB: nothing is kept, and a socket
closed with unread data is reset, which would make an honest client lose the 401 itself.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from fastapi import HTTPException, status
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from forwardguard.errors import ForwardguardError
from forwardguard.registry.keys import ApiKeyRecord, authenticate

if TYPE_CHECKING:
    from forwardguard.serve.state import ServeState

UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}
_SCOPE_KEY = "api_key"
DISCARD_BYTES = 1 << 20
DISCARD_SECONDS = 1.0


def check_key(state: ServeState, key: str | None) -> ApiKeyRecord:
    """The key's record; 401 without a key or with an unknown or revoked one, 503 when the registry
    fails (blocking: call it from a thread)."""
    if not key:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API key: send Authorization: Bearer KEY", headers=UNAUTHORIZED)
    try:
        record = authenticate(state.registry, key=key)
    except ForwardguardError as error:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"the registry is unavailable: {error}") from None
    if record is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or revoked API key", headers=UNAUTHORIZED)
    return record


def checked_key(scope: Scope) -> ApiKeyRecord | None:
    """The record that :class:`AuthenticateBeforeBody` found for this request, if it ran."""
    return scope.get("state", {}).get(_SCOPE_KEY)


def bearer_key(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            return key.strip() if scheme.lower() == "bearer" else None
    return None


class AuthenticateBeforeBody:
    """For ``/v1`` requests with a body: 401 (or 503) from the headers, before the body is read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS") or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        try:
            record = await run_in_threadpool(check_key, scope["app"].state.serve, bearer_key(scope))
        except HTTPException as error:
            response = JSONResponse(
                {"detail": error.detail}, status_code=error.status_code, headers={**(error.headers or {}), "Connection": "close"}
            )
            try:
                await asyncio.wait_for(_discard_body(receive), DISCARD_SECONDS)
            except asyncio.TimeoutError:
                pass
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})[_SCOPE_KEY] = record
        await self.app(scope, receive, send)


async def _discard_body(receive: Receive) -> None:
    """Read and drop the request body, up to ``DISCARD_BYTES`` (see the module docstring)."""
    received = 0
    while received <= DISCARD_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            return
