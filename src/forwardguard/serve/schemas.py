"""What the API answers with: response schemas built from registry records (never from rows)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from forwardguard.registry import Match, PatternRecord

GET_PATTERN_OPERATION = "get_pattern_v1_patterns__pattern_id__get"


def link_to_pattern(expression: str) -> dict[str, Any]:
    """An OpenAPI ``links`` entry: the pattern that ``expression`` (a runtime expression) names can be
    fetched with ``GET /v1/patterns/{pattern_id}`` (for clients, and for stateful API tests)."""
    return {"GetPattern": {"operationId": GET_PATTERN_OPERATION, "parameters": {"pattern_id": expression}}}


class Error(BaseModel):
    detail: str


class Pattern(BaseModel):
    id: str = Field(description="sha256 over the immunized PNG's sha256, the delta's sha256 and the tenant.")
    tenant: str
    method: str
    params: dict[str, Any] = Field(description="The attack's parameters.")
    target: str
    model_fingerprint: str = Field(description="sha256 of the weights of the model the image was immunized against.")
    model_spec: str
    image_sha256: str = Field(description="sha256 of the immunized PNG file.")
    pixel_sha256: str = Field(description="sha256 of its decoded RGB pixels.")
    delta_blob_sha256: str
    phash: str = Field(description="64-bit perceptual hash, hex.")
    width: int
    height: int
    has_alpha: bool
    created_at: datetime
    status: Literal["active", "retired"]
    retired_at: datetime | None

    @classmethod
    def of(cls, record: PatternRecord) -> Pattern:
        return cls(**(record.to_dict() | {"created_at": record.created_at, "retired_at": record.retired_at}))


class PatternList(BaseModel):
    patterns: list[Pattern]
    next_after: str | None = Field(
        None,
        description="The last pattern's id when the page is full: pass it as `after` for the next page (null on the last page).",
    )


class PatternMatch(BaseModel):
    id: str
    kind: Literal["bytes", "pixels", "perceptual"] = Field(
        description="bytes: the same file; pixels: the same pixels re-saved losslessly; perceptual: a perceptual-hash match."
    )
    distance: int = Field(description="Hamming distance of the perceptual hashes, of 64 bits (0 for exact matches).")
    status: Literal["active", "retired"]
    method: str
    model_fingerprint: str
    created_at: datetime

    @classmethod
    def of(cls, match: Match) -> PatternMatch:
        record = match.pattern
        return cls(
            id=record.id,
            kind=match.kind,
            distance=match.distance,
            status=record.status,
            method=record.method,
            model_fingerprint=record.model_fingerprint,
            created_at=record.created_at,
        )


class Lookup(BaseModel):
    immunized: bool = Field(description="Whether any of the caller's patterns matches.")
    matches: list[PatternMatch] = Field(description="Best first.")


class Model(BaseModel):
    spec: str
    fingerprint: str
    methods: list[str]


class ModelList(BaseModel):
    models: list[Model] = Field(description="The first is the default.")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    registry: str = Field(description="'ok', or why the registry does not answer.")
    workers: int = Field(description="Model worker threads alive.")
    queue_depth: int
