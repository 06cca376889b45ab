"""What every command shares: user errors as one line on stderr, and a non-zero exit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from forwardguard.errors import ForwardguardError, one_line

if TYPE_CHECKING:
    from rich.progress import Progress  # rich loads on use: --help answers at once

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


def progress_bar() -> Progress:
    """The progress bar of a long command (eval, finetune): on stderr, removed when done."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    return Progress(*columns, console=Console(stderr=True, soft_wrap=True), transient=True)
