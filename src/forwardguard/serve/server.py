"""Run the app on uvicorn: one process, the model work in its worker threads.

On SIGTERM or SIGINT uvicorn stops accepting connections and waits for the requests in flight
(up to the request timeout); then the lifespan lets the workers finish and closes the registry,
and uvicorn raises the signal again, so that the process ends with the signal's status.
"""

from __future__ import annotations

import uvicorn

from forwardguard.errors import ForwardguardError
from forwardguard.serve.app import create_app
from forwardguard.serve.settings import ServeSettings

# Time beyond the request timeout for answers to be sent before shutdown cuts connections.
_SHUTDOWN_GRACE_S = 10


def build_server(settings: ServeSettings) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.request_timeout_s + _SHUTDOWN_GRACE_S),
        limit_concurrency=settings.max_connections,
        log_level="info",
    )
    return uvicorn.Server(config)


def run(settings: ServeSettings) -> None:
    """Serve until SIGTERM or SIGINT; ForwardguardError when the service can't start."""
    from forwardguard.registry import Registry

    Registry.open(settings.registry).close()  # the commonest mistake, said in one line
    server = build_server(settings)
    try:
        server.run()
    except SystemExit:
        if server.started:
            raise
        # uvicorn exits when the startup fails; the reason is said below, in one line
    if not server.started:
        # uvicorn types config.app as any ASGI app (or an import string); here it is our FastAPI app
        error = getattr(server.config.app.state, "startup_error", None)  # type: ignore[union-attr]
        raise ForwardguardError(f"the server did not start: {error or 'see the log above'}")
