"""``POST /v1/immunize``: immunize an uploaded image, record it, send the immunized PNG back."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile, status
from starlette.concurrency import run_in_threadpool

from forwardguard.errors import ForwardguardError
from forwardguard.immunize.attack import AttackSettings
from forwardguard.immunize.robust import mix_names
from forwardguard.models.edits import EditSettings
from forwardguard.numbers import parse_number
from forwardguard.serve.deps import ApiKey, MultipartBody, StateDep
from forwardguard.serve.limits import (
    check_image_upload,
    decode_image,
    decode_mask,
    retry_after,
)
from forwardguard.serve.schemas import Error, link_to_pattern
from forwardguard.serve.settings import ServeSettings
from forwardguard.serve.work import MAX_ROBUST_DRAWS, check_work
from forwardguard.serve.workers import (
    BatchKey,
    Immunized,
    ImmunizeJob,
    ModelWorkers,
    NotRecorded,
    QueueFull,
    ServedModel,
)

router = APIRouter(prefix="/v1", tags=["immunize"])

_PNG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The immunized image: 8-bit PNG at the input's size, recorded in the registry.",
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        "headers": {
            "X-Pattern-Id": {"description": "The recorded pattern's id.", "schema": {"type": "string"}},
            "X-Model-Fingerprint": {"description": "The model it was immunized against.", "schema": {"type": "string"}},
            "Location": {"description": "/v1/patterns/{id}: the pattern's record.", "schema": {"type": "string"}},
        },
        "links": link_to_pattern("$response.header.X-Pattern-Id"),
    },
    400: {"model": Error, "description": "The image or mask can't be decoded."},
    401: {"model": Error, "description": "No API key, or an unknown or revoked one."},
    413: {
        "model": Error,
        "description": "The body, or the image's pixel count padded to the model's multiple, is over the limit.",
    },
    415: {"model": Error, "description": "Not multipart/form-data, or an image that is not PNG, JPEG or WebP."},
    429: {"model": Error, "description": "The key's rate limit: retry after Retry-After seconds."},
    503: {"model": Error, "description": "The queue is full (retry after Retry-After seconds) or the registry failed."},
    504: {"model": Error, "description": "The immunization took longer than the request timeout; nothing was recorded."},
}


@router.post("/immunize", response_class=Response, responses=_PNG_RESPONSE, summary="Immunize an image")
async def immunize_image(
    key: ApiKey,
    _: MultipartBody,
    state: StateDep,
    image: Annotated[UploadFile, File(description="The image: PNG, JPEG or WebP.")],
    method: Annotated[
        Literal["encoder", "diffusion", "noise"],
        Form(description="encoder (any model), diffusion (Stable Diffusion models), or noise (the random baseline)."),
    ] = "encoder",
    eps: Annotated[
        str, Form(max_length=32, description="L-inf budget as a fraction of the pixel range, e.g. 16/255 or 0.0627.")
    ] = "16/255",
    steps: Annotated[int | None, Form(ge=0, description="PGD steps (default: the server's, 200 unless set).")] = None,
    seed: Annotated[int, Form(ge=0, le=2**32 - 1, description="Seed of the noise and of the edit.")] = 0,
    target: Annotated[Literal["gray"], Form(description="The attack's target (planting supports gray only).")] = "gray",
    mask: Annotated[
        UploadFile | None, File(description="Inpainting mask, white where the adversary edits (diffusion only).")
    ] = None,
    model: Annotated[
        str | None, Form(max_length=512, description="A served model's spec or fingerprint (default: the first).")
    ] = None,
    robust: Annotated[
        bool, Form(description="Robust immunization: every PGD step averages the loss over transforms of the image.")
    ] = False,
    robust_mix: Annotated[
        str | None,
        Form(
            max_length=512,
            description="The robust mix as comma-separated transform names, e.g. jpeg_q75,resize_0.5,hflip,jpeg_q75+rshift_7 "
            "(repeats weight one; + chains); implies robust. Default: JPEG, noise, resize, crop, blur, flip, rotation, "
            "random shifts and random crops.",
        ),
    ] = None,
    robust_draws: Annotated[
        int, Form(ge=1, le=MAX_ROBUST_DRAWS, description="Transforms averaged per PGD step when robust.")
    ] = 1,
) -> Response:
    """Immunize the image against one of the served models and record it under the caller's tenant.

    The response is sent only after the pattern is committed to the registry: an image a client
    receives is always recorded, and a request answered with an error recorded nothing.
    """
    settings = state.settings
    served = state.resolve_model(model)
    attack = _attack_settings(
        settings,
        served,
        method=method,
        eps=eps,
        steps=steps,
        seed=seed,
        masked=mask is not None,
        robust=robust,
        robust_mix=robust_mix,
        robust_draws=robust_draws,
    )
    image_data = await image.read()
    size = check_image_upload(image_data, image.content_type, max_pixels=settings.max_pixels, field="image")
    check_work(attack, size, multiple=served.multiple(method), max_pixels=settings.max_pixels)
    mask_data = None
    if mask is not None:
        mask_data = await mask.read()
        check_image_upload(mask_data, mask.content_type, max_pixels=settings.max_pixels, field="mask")
    loaded = await run_in_threadpool(decode_image, image_data, max_pixels=settings.max_pixels, field="image")
    mask_array = None
    if mask_data is not None:
        mask_array = await run_in_threadpool(decode_mask, mask_data, image=loaded, max_pixels=settings.max_pixels)
    job = ImmunizeJob(
        key=BatchKey(served.fingerprint, attack, (loaded.height, loaded.width), mask_array is not None),
        image=loaded,
        mask=mask_array,
        tenant=key.tenant,
        source=image.filename or None,
        mask_name=None if mask is None else mask.filename or "mask",
        loop=asyncio.get_running_loop(),
    )
    try:
        state.workers.submit(job)
    except QueueFull as error:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"the service is busy: {error}; retry later", headers=retry_after(1)
        ) from None
    done = await _answer(state.workers, job, settings.request_timeout_s)
    return Response(
        content=done.png,
        media_type="image/png",
        headers={
            "X-Pattern-Id": done.record.id,
            "X-Model-Fingerprint": done.record.model_fingerprint,
            "Location": f"/v1/patterns/{done.record.id}",
        },
    )


def _attack_settings(
    settings: ServeSettings,
    served: ServedModel,
    *,
    method: str,
    eps: str,
    steps: int | None,
    seed: int,
    masked: bool,
    robust: bool,
    robust_mix: str | None,
    robust_draws: int,
) -> AttackSettings:
    """The request's attack within the server's limits; 422 naming what is wrong."""

    def invalid(message: str) -> HTTPException:
        return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)

    if method not in served.methods:
        methods = ", ".join(served.methods)
        raise invalid(f"method {method} needs a Stable Diffusion model; {served.spec} is not one (its methods: {methods})")
    if masked and method != "diffusion":
        raise invalid("a mask is for the diffusion attack's inpainting edit: use method diffusion")
    try:
        eps_value = parse_number(eps, what="eps")
    except ForwardguardError as error:
        raise invalid(str(error)) from None
    if not 0 < eps_value <= settings.max_eps:
        raise invalid(f"eps must be within (0, {settings.max_eps * 255:g}/255], got {eps}")
    steps = settings.steps_when_unset if steps is None else steps
    if steps > settings.max_steps:
        raise invalid(f"steps must be at most {settings.max_steps}, got {steps}")
    try:
        mix = mix_names(robust, robust_mix)
    except ForwardguardError as error:
        raise invalid(f"robust_mix: {error}") from None
    try:
        return AttackSettings(
            method=method,
            eps=eps_value,
            steps=steps,
            seed=seed,
            edit=EditSettings(seed=seed),
            robust=mix,
            robust_draws=robust_draws if mix else 1,  # a plain attack whatever the draws: batched with its likes
        )
    except ForwardguardError as error:
        raise invalid(str(error)) from None


async def _answer(workers: ModelWorkers, job: ImmunizeJob, timeout_s: float) -> Immunized:
    """Wait for the job; past the timeout, cancel it (504) unless it is being recorded already."""
    try:
        try:
            return await asyncio.wait_for(asyncio.shield(job.done), timeout_s)
        except asyncio.TimeoutError:
            if workers.cancel(job):
                raise HTTPException(
                    status.HTTP_504_GATEWAY_TIMEOUT,
                    f"the immunization did not finish within {timeout_s:g} s and was dropped: nothing was recorded "
                    "(ask for fewer steps or send a smaller image)",
                ) from None
            return await job.done  # being recorded: the answer comes within moments
        except asyncio.CancelledError:  # the server is going down without waiting for this request
            workers.cancel(job)
            raise
    except NotRecorded as error:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"the registry did not record the pattern: {error}") from None
    except ForwardguardError as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(error)) from None
