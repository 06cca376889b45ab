"""The app factory: routers, middleware, and a lifespan that owns the registry and the workers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

import forwardguard
from forwardguard.serve.auth import AuthenticateBeforeBody
from forwardguard.serve.limits import BodyLimitMiddleware
from forwardguard.serve.metrics import Metrics, MetricsMiddleware
from forwardguard.serve.routers import health, immunize, lookup, models, patterns
from forwardguard.serve.settings import ServeSettings
from forwardguard.serve.state import ServeState

DESCRIPTION = """\
Immunize images against AI editing with the provider's models, and record every immunized image
in the provider's registry, so that the next model version is planted with it.

Every `/v1` route needs `Authorization: Bearer KEY` (keys: `forwardguard keys create --tenant NAME`);
a tenant sees only its own patterns.
"""


def create_app(settings: ServeSettings) -> FastAPI:
    """The service's app. Nothing is opened until it starts: the lifespan opens the registry, loads
    the models into the workers, and on shutdown lets the queued work finish before closing them."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            state = await run_in_threadpool(ServeState.open, settings, metrics)
        except Exception as error:
            app.state.startup_error = error  # for forwardguard.serve.server.run's message
            raise
        app.state.serve = state
        try:
            yield
        finally:
            await run_in_threadpool(state.close)

    app = FastAPI(title="forwardguard", version=forwardguard.__version__, description=DESCRIPTION, lifespan=lifespan)
    for router in (immunize.router, lookup.router, patterns.router, models.router, health.router):
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes, timeout_s=settings.upload_timeout_s)
    app.add_middleware(AuthenticateBeforeBody)  # outside the body limit: no body is read without a key
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts the body limit's answers too
    return app
