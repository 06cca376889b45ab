"""What keeps one client from taking the service down: body size and time, per-key rate, image checks."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
from fastapi import HTTPException, status
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from forwardguard.errors import ForwardguardError
from forwardguard.images import LoadedImage, image_size, read_image, read_mask

IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}


class BodyLimitMiddleware:
    """Reads a request's body before the app does: 413 past ``max_bytes``, 408 past ``timeout_s``.

    A body that is too large is read to its end and dropped (up to as much again), so that the
    client, still sending, gets the 413 instead of a reset connection.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.timeout_s
        declared = _content_length(scope)
        too_large = declared is not None and declared > self.max_bytes
        chunks: list[bytes] = []
        received = 0
        more = True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
            except asyncio.TimeoutError:
                await _error(
                    scope,
                    receive,
                    send,
                    status.HTTP_408_REQUEST_TIMEOUT,
                    f"the request body did not arrive within {self.timeout_s:g} s",
                )
                return
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            received += len(body)
            more = message.get("more_body", False)
            if received > self.max_bytes:
                too_large = True
            if too_large:
                if received > 2 * self.max_bytes:
                    break  # stop reading: the connection closes after the response
                continue
            chunks.append(body)
        if too_large:
            await _error(
                scope,
                receive,
                send,
                status.HTTP_413_CONTENT_TOO_LARGE,
                f"the request body is over the limit of {self.max_bytes} bytes",
            )
            return
        whole: bytes | None = b"".join(chunks)
        chunks.clear()  # one copy of the body in memory, not two

        async def replay() -> Message:
            nonlocal whole
            if whole is not None:
                body, whole = whole, None
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _error(scope: Scope, receive: Receive, send: Send, code: int, detail: str) -> None:
    await JSONResponse({"detail": detail}, status_code=code, headers={"Connection": "close"})(scope, receive, send)


class RateLimiter:
    """A token bucket per API key: ``burst`` requests at once, then ``per_minute`` a minute.

    Used from the event loop only, so it needs no lock.
    """

    def __init__(self, *, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key_id: str) -> float:
        """Take one request from the key's bucket: 0 when allowed, else the seconds until it would be."""
        now = time.monotonic()
        tokens, last = self._buckets.get(key_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[key_id] = (tokens - 1, now)
            return 0.0
        self._buckets[key_id] = (tokens, now)
        return (1 - tokens) / self.rate


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def check_image_upload(data: bytes, content_type: str | None, *, max_pixels: int, field: str) -> tuple[int, int]:
    """The upload's (width, height); 415 unless it is a PNG, JPEG or WebP image (by its bytes) declared
    as such, or as untyped (application/octet-stream or nothing); 413 past ``max_pixels``.

    Only the header is read: nothing is decoded yet.
    """
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared not in (*IMAGE_TYPES, "application/octet-stream", ""):
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"{field}: content type {declared} is not accepted: send image/png, image/jpeg or image/webp",
        )
    try:
        width, height = image_size(data, field)  # with our pixel limit only, not Pillow's process-wide one
    except ForwardguardError:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"{field}: not a PNG, JPEG or WebP image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{field}: not a readable image ({error})") from None
    if width * height > max_pixels:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"{field}: {width} x {height} = {width * height} pixels is over the limit of {max_pixels}",
        )
    return width, height


def decode_image(data: bytes, *, max_pixels: int, field: str) -> LoadedImage:
    """The checked upload's pixels; 400 when it is truncated or corrupt."""
    try:
        return read_image(data, max_pixels=max_pixels, name=field)
    except ForwardguardError as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(error)) from None


def decode_mask(data: bytes, *, image: LoadedImage, max_pixels: int) -> np.ndarray:
    """The checked mask upload as (H, W) float32 in {0, 1}; 400 when unreadable or of another size."""
    try:
        return read_mask(data, size=(image.width, image.height), max_pixels=max_pixels, name="mask")
    except ForwardguardError as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(error)) from None
