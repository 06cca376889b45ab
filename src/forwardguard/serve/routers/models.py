"""``GET /v1/models``: the models this service immunizes against, and the methods each allows."""

from __future__ import annotations

from fastapi import APIRouter

from forwardguard.serve.deps import ApiKey, StateDep
from forwardguard.serve.schemas import Error, Model, ModelList

router = APIRouter(prefix="/v1", tags=["models"])


@router.get(
    "/models",
    response_model=ModelList,
    summary="List the served models",
    responses={401: {"model": Error}, 429: {"model": Error}},
)
async def list_models(key: ApiKey, state: StateDep) -> ModelList:
    return ModelList(models=[Model(spec=m.spec, fingerprint=m.fingerprint, methods=list(m.methods)) for m in state.models])
