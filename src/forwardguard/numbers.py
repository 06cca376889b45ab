"""The one parser of numbers that users write: CLI options, API fields, settings.

Python's own parsers trust their input: ``Fraction("1e-30000000")`` builds a 30-million-digit
integer (a minute of CPU), and ``float("1e400")`` is infinity. A user's number here is at most
``MAX_LENGTH`` characters, a decimal (``0.0627``, ``8``, ``6.27e-2``) or a fraction of two decimals
(``16/255``), with a decimal exponent of at most ``MAX_EXPONENT``; it is checked by its text before
anything is computed, so parsing costs microseconds whatever is sent, and the result is finite.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from forwardguard.errors import ForwardguardError

MAX_LENGTH = 32
MAX_EXPONENT = 30
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE]([+-]?\d+))?", re.ASCII)


def parse_number(text: str, *, what: str = "number", low: float | None = None, high: float | None = None) -> float:
    """``text`` as a finite float, within [``low``, ``high``] where given.

    Raises ForwardguardError naming ``what`` for anything else: too long, not a decimal or a
    fraction, an exponent beyond ``MAX_EXPONENT``, a zero denominator, or out of range.
    """
    stripped = text.strip()
    if len(stripped) > MAX_LENGTH:
        raise ForwardguardError(f"{what}: {stripped[:MAX_LENGTH]!r}... is over {MAX_LENGTH} characters")
    parts = stripped.split("/")
    if len(parts) > 2 or not all(_is_decimal(part) for part in parts):
        raise ForwardguardError(
            f"{what}: not a number or fraction: {stripped!r} (write e.g. 16/255 or 0.0627, exponents up to e{MAX_EXPONENT})"
        )
    value = Fraction(parts[0])
    if len(parts) == 2:
        denominator = Fraction(parts[1])
        if denominator == 0:
            raise ForwardguardError(f"{what}: {stripped!r} divides by zero")
        value /= denominator
    number = float(value)  # at most about 1e62 in magnitude: always finite
    if low is not None and number < low:
        raise ForwardguardError(f"{what} must be at least {low:g}, got {stripped}")
    if high is not None and number > high:
        raise ForwardguardError(f"{what} must be at most {high:g}, got {stripped}")
    return number


def _is_decimal(text: str) -> bool:
    match = _DECIMAL.fullmatch(text.strip())
    if match is None:
        return False
    exponent = match.group(1)
    return exponent is None or abs(int(exponent)) <= MAX_EXPONENT


def check_finite(value: float, what: str) -> float:
    """``value`` when it is a finite number; ForwardguardError otherwise (NaN, infinity)."""
    if not math.isfinite(value):
        raise ForwardguardError(f"{what} must be a finite number, got {value}")
    return value
