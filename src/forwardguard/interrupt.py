"""Stopping long work inside a step: the loops of an attack call :func:`checkpoint` between pieces.

A caller that may give up on the work (the API's request timeout) runs it under
``interruptible(check)``; ``check`` raises to stop. The PGD loop checks before a step's forward
and backward passes, robust immunization before each drawn transform and each image of a batch,
and the diffusion edit before each denoising step, so one check is never more than one model
pass away. Outside ``interruptible`` a checkpoint does nothing. The check is per thread (a
context variable): each API worker checks its own batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_check: ContextVar[Callable[[], None] | None] = ContextVar("forwardguard_interrupt_check", default=None)


@contextmanager
def interruptible(check: Callable[[], None]) -> Iterator[None]:
    """Run the block with ``check`` called at every checkpoint (it raises to interrupt)."""
    token = _check.set(check)
    try:
        yield
    finally:
        _check.reset(token)


def checkpoint() -> None:
    """Give the caller of :func:`interruptible` the chance to stop the work here."""
    check = _check.get()
    if check is not None:
        check()
