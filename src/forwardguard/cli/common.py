"""What every command shares: user errors as one line on stderr, and a non-zero exit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from forwardguard.errors import ForwardguardError, one_line


def print_error(message: str) -> None:
    """``error: message`` on one line of stderr, whatever the message holds."""
    typer.echo(f"error: {one_line(message)}", err=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a ForwardguardError into ``error: <message>`` on stderr and exit status 1."""
    try:
        yield
    except ForwardguardError as error:
        print_error(str(error))
        raise typer.Exit(1) from None
