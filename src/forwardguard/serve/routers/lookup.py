"""``POST /v1/lookup``: is this image immunized, by which of the caller's patterns, how close."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile, status

from forwardguard.errors import ForwardguardError
from forwardguard.registry import PHASH_MAX_DISTANCE
from forwardguard.serve.deps import ApiKey, MultipartBody, StateDep
from forwardguard.serve.limits import check_image_upload, decode_image
from forwardguard.serve.schemas import Error, Lookup, PatternMatch, link_to_pattern

router = APIRouter(prefix="/v1", tags=["lookup"])


@router.post(
    "/lookup",
    response_model=Lookup,
    summary="Find an image's patterns",
    responses={
        200: {"links": link_to_pattern("$response.body#/matches/0/id")},
        400: {"model": Error},
        401: {"model": Error},
        413: {"model": Error},
        415: {"model": Error},
        429: {"model": Error},
        503: {"model": Error},
    },
)
def lookup_image(
    key: ApiKey,
    _: MultipartBody,
    state: StateDep,
    image: Annotated[UploadFile, File(description="The image: PNG, JPEG or WebP.")],
    max_distance: Annotated[
        int, Form(ge=0, le=64, description="Largest perceptual-hash distance that matches, of 64 bits.")
    ] = PHASH_MAX_DISTANCE,
    perceptual: Annotated[
        bool, Form(description="Search perceptual hashes even when the file or its pixels match exactly.")
    ] = False,
) -> Lookup:
    """The caller's patterns that match: the same file, the same pixels, then (when nothing matched
    exactly, or with ``perceptual``) perceptually close images (a JPEG or resized copy). A perceptual
    match says the image shows the pattern's picture; it can't say whether the perturbation survived."""
    data = image.file.read()
    settings = state.settings
    check_image_upload(data, image.content_type, max_pixels=settings.max_pixels, field="image")
    loaded = decode_image(data, max_pixels=settings.max_pixels, field="image")  # 400 when corrupt, before the registry
    try:
        matches = state.registry.lookup(
            loaded.rgb,
            file_sha256=hashlib.sha256(data).hexdigest(),
            tenant=key.tenant,
            max_distance=max_distance,
            perceptual=perceptual,
        )
    except ForwardguardError as error:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"the registry is unavailable: {error}") from None
    return Lookup(immunized=bool(matches), matches=[PatternMatch.of(match) for match in matches])
