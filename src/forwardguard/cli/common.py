"""What every command shares: user errors as one line on stderr, and a non-zero exit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from forwardguard.errors import ForwardguardError, one_line

EXTRAS = {
    "fastapi": "serve",
    "uvicorn": "serve",
    "python_multipart": "serve",
    "prometheus_client": "serve",
    "pydantic_settings": "serve",
    "psycopg": "postgres",
}
"""The optional dependencies (top-level modules) and the extra of pyproject.toml that installs each."""


def print_error(message: str) -> None:
    """``error: message`` on one line of stderr, whatever the message holds."""
    typer.echo(f"error: {one_line(message)}", err=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a ForwardguardError, or a missing optional dependency, into ``error: <message>`` on stderr
    and exit status 1."""
    try:
        yield
    except ForwardguardError as error:
        print_error(str(error))
        raise typer.Exit(1) from None
    except ModuleNotFoundError as error:
        module = (error.name or "").partition(".")[0]
        if module not in EXTRAS:
            raise
        extra = EXTRAS[module]
        print_error(f"{module} is not installed; this command needs the {extra} extra: pip install 'forwardguard[{extra}]'")
        raise typer.Exit(1) from None
