"""``forwardguard serve``: the HTTP immunization API (see :mod:`forwardguard.serve`).

Every option can also come from a ``FORWARDGUARD_SERVE_<NAME>`` variable (``--model`` from
``FORWARDGUARD_SERVE_MODELS`` as a JSON list); FastAPI, uvicorn and torch are imported inside the
command.
"""

from __future__ import annotations

from typing import Annotated

import typer

from forwardguard.cli.common import user_errors


def serve_command(
    registry: Annotated[
        str,
        typer.Option(
            "--registry",
            envvar="FORWARDGUARD_REGISTRY",
            help="The registry every immunized image is recorded in (path or URL); it must exist.",
            show_default=False,
        ),
    ],
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Required: a model to immunize against (repeat for several; the first is the default).",
                     show_default=False),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).", show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="Port; 0 picks a free one (default 8000).", show_default=False)] = None,
    workers: Annotated[
        int | None, typer.Option(help="Model worker threads, each with its own models (default 1).", show_default=False)
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (default auto).", show_default=False)] = None,
    torch_threads: Annotated[
        int | None,
        typer.Option(help="CPU threads of the model work (default torch's: the cores); workers x threads <= cores.",
                     show_default=False),
    ] = None,
    max_pixels: Annotated[
        int | None, typer.Option(help="Largest width x height of an upload, padded to the model's multiple (default 4000000).", show_default=False)
    ] = None,
    max_upload_mb: Annotated[
        float | None, typer.Option(help="Largest request body, MiB (default 20).", show_default=False)
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Most PGD steps a request may ask for (default 500).",
                                                  show_default=False)] = None,
    default_steps: Annotated[int | None, typer.Option(help="PGD steps when a request names none (default 200, or --max-steps if lower).",
                                                      show_default=False)] = None,
    max_eps: Annotated[str | None, typer.Option(help="Largest budget a request may ask for (default 32/255).",
                                                show_default=False)] = None,
    queue_size: Annotated[int | None, typer.Option(help="Waiting requests before 503 (default 64).",
                                                   show_default=False)] = None,
    max_batch: Annotated[int | None, typer.Option(help="Most alike requests attacked together (default 8).",
                                                  show_default=False)] = None,
    rate_per_minute: Annotated[float | None, typer.Option(help="Requests a minute per API key (default 60).",
                                                          show_default=False)] = None,
    rate_burst: Annotated[int | None, typer.Option(help="Requests a key may make at once (default 10).",
                                                   show_default=False)] = None,
    request_timeout: Annotated[float | None, typer.Option(help="Seconds an immunization may take (default 300).",
                                                          show_default=False)] = None,
    upload_timeout: Annotated[float | None, typer.Option(help="Seconds to receive a request body (default 60).",
                                                         show_default=False)] = None,
    max_connections: Annotated[int | None, typer.Option(help="Connections and requests at once before 503 (default 256).",
                                                        show_default=False)] = None,
) -> None:
    """Serve the immunization API: POST /v1/immunize, POST /v1/lookup, GET /v1/patterns/{id}, /healthz, /metrics."""
    with user_errors():
        from forwardguard.numbers import parse_number
        from forwardguard.serve import load_settings, run

        settings = load_settings(
            registry=registry,
            models=model or None,
            host=host,
            port=port,
            workers=workers,
            device=device,
            torch_threads=torch_threads,
            max_pixels=max_pixels,
            max_upload_mb=max_upload_mb,
            max_steps=max_steps,
            default_steps=default_steps,
            max_eps=None if max_eps is None else parse_number(max_eps, what="--max-eps"),
            queue_size=queue_size,
            max_batch=max_batch,
            rate_per_minute=rate_per_minute,
            rate_burst=rate_burst,
            request_timeout_s=request_timeout,
            upload_timeout_s=upload_timeout,
            max_connections=max_connections,
        )
        run(settings)
