"""``GET /healthz`` (liveness and the registry's reachability) and ``GET /metrics`` (Prometheus).

Neither needs a key: they are for the provider's load balancer and monitoring, and tell nothing
about any tenant.
"""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from forwardguard.serve.deps import StateDep
from forwardguard.serve.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness and registry reachability", responses={503: {"model": Health}})
def healthz(state: StateDep) -> Response:
    problem = state.registry_problem()
    workers = state.workers.alive
    ok = problem is None and workers == state.settings.workers
    health = Health(
        status="ok" if ok else "unavailable",
        registry=problem or "ok",
        workers=workers,
        queue_depth=state.workers.depth,
    )
    code = status.HTTP_200_OK if ok else status.HTTP_503_SERVICE_UNAVAILABLE
    return JSONResponse(health.model_dump(), status_code=code)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
)
def metrics(state: StateDep) -> Response:
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
