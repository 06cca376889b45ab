"""Request dependencies, as ``Annotated`` aliases: the app state, the caller's API key, the body type."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from forwardguard.registry.keys import ApiKeyRecord
from forwardguard.serve.auth import check_key, checked_key
from forwardguard.serve.limits import retry_after
from forwardguard.serve.state import ServeState

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key made with `forwardguard keys create --tenant NAME`, as `Authorization: Bearer KEY`.",
)


def get_state(request: Request) -> ServeState:
    return request.app.state.serve


StateDep = Annotated[ServeState, Depends(get_state)]


def authenticated_key(
    request: Request, state: StateDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> ApiKeyRecord:
    """401 without a key, or with an unknown or revoked one (a plain def: FastAPI runs it in a thread).

    A request with a body had its key checked before the body was read (:mod:`forwardguard.serve.auth`).
    """
    record = checked_key(request.scope)
    if record is not None:
        return record
    return check_key(state, None if credentials is None else credentials.credentials)


async def rate_limited_key(key: Annotated[ApiKeyRecord, Depends(authenticated_key)], state: StateDep) -> ApiKeyRecord:
    """429 with Retry-After once the key has spent its burst and its rate."""
    wait = state.limiter.take(key.id)
    if wait > 0:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"rate limit of {state.settings.rate_per_minute:g} requests a minute for this key",
            headers=retry_after(wait),
        )
    return key


ApiKey = Annotated[ApiKeyRecord, Depends(rate_limited_key)]


def multipart_body(request: Request) -> None:
    """415 unless the request is multipart/form-data (the file fields need it)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"send multipart/form-data (the image in field 'image'), not {content_type or 'no content type'}",
        )


MultipartBody = Annotated[None, Depends(multipart_body)]
