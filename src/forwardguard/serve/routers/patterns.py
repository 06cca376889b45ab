"""``GET /v1/patterns``: the caller's recorded patterns; another tenant's are never shown (404)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, status

from forwardguard.errors import ForwardguardError
from forwardguard.registry import PatternRecord
from forwardguard.serve.deps import ApiKey, StateDep
from forwardguard.serve.schemas import Error, Pattern, PatternList, link_to_pattern
from forwardguard.serve.state import ServeState

router = APIRouter(prefix="/v1", tags=["patterns"])
_ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": Error}, 429: {"model": Error}, 503: {"model": Error}}


@router.get(
    "/patterns",
    response_model=PatternList,
    summary="List your patterns",
    responses=_ERRORS | {200: {"links": link_to_pattern("$response.body#/patterns/0/id")}},
)
def list_patterns(
    key: ApiKey,
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    after: Annotated[
        str | None,
        Query(pattern="^[0-9a-f]{64}$", description="A page's `next_after`: the patterns after that one (keyset paging)."),
    ] = None,
) -> PatternList:
    """The caller's patterns, oldest first. Page with ``after`` (each page's ``next_after``): it reads on
    from where the last page ended, where ``offset`` skips every earlier row again."""
    if after is not None:
        previous = _find(state, after)
        if previous is None or previous.tenant != key.tenant:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no pattern {after}")
    try:
        records = state.registry.list_patterns(tenant=key.tenant, limit=limit, offset=offset, after=after)
    except ForwardguardError as error:
        raise _unavailable(error) from None
    next_after = records[-1].id if len(records) == limit else None
    return PatternList(patterns=[Pattern.of(record) for record in records], next_after=next_after)


@router.get(
    "/patterns/{pattern_id}",
    response_model=Pattern,
    summary="Get one of your patterns",
    responses=_ERRORS | {404: {"model": Error}},
)
def get_pattern(
    key: ApiKey,
    state: StateDep,
    pattern_id: Annotated[str, Path(pattern="^[0-9a-f]{64}$", description="The full pattern id (64 hex digits).")],
) -> Pattern:
    record = _find(state, pattern_id)
    if record is None or record.tenant != key.tenant:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no pattern {pattern_id}")
    return Pattern.of(record)


def _find(state: ServeState, pattern_id: str) -> PatternRecord | None:
    """The pattern, or None when the registry has none (503 when the registry doesn't answer)."""
    try:
        return state.registry.get_pattern(pattern_id)
    except ForwardguardError as error:
        problem = state.registry_problem()
        if problem is not None:
            raise _unavailable(problem) from error
        return None


def _unavailable(error: object) -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"the registry is unavailable: {error}")
