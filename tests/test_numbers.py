"""The one parser of user numbers: bounded in length and exponent, finite, ranged (issue 14 items 1, 6)."""

from __future__ import annotations

import math
import time
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwardguard.errors import ForwardguardError
from forwardguard.numbers import MAX_EXPONENT, MAX_LENGTH, check_finite, parse_number


@pytest.mark.parametrize(
    ("text", "value"),
    [("16/255", 16 / 255), ("0.0627", 0.0627), ("8", 8.0), (" 6.27e-2 ", 0.0627), ("-1.5", -1.5), (".5", 0.5), ("1E+3/1e3", 1.0)],
)
def test_parses_decimals_and_fractions(text: str, value: float) -> None:
    assert parse_number(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["1e-10000000", "1e-30000000", "9" * 20 + "e-99999", "1" * 40, "1e400", "1e31"])
def test_item_01_huge_exponents_are_refused_at_once(text: str) -> None:
    """issue 14 item 1: a short number with a huge exponent is refused by its text, not computed."""
    started = time.monotonic()
    with pytest.raises(ForwardguardError, match=r"not a number or fraction|over \d+ characters"):
        parse_number(text, what="eps")
    assert time.monotonic() - started < 0.1


@pytest.mark.parametrize("text", ["1e400", "1e30/1e-300", "inf", "nan", "1/0", "", "1/2/3", "0x10", "١٦"])
def test_item_06_overflow_infinity_and_junk_are_one_line_errors(text: str) -> None:
    """issue 14 item 6: 1e400 overflowed (OverflowError, a 500 and a traceback); now a ForwardguardError."""
    with pytest.raises(ForwardguardError):
        parse_number(text, what="--eps")


def test_range_and_finite_checks_name_the_value() -> None:
    with pytest.raises(ForwardguardError, match="eps must be at most 1"):
        parse_number("2", what="eps", high=1)
    with pytest.raises(ForwardguardError, match="eps must be at least 0"):
        parse_number("-1/255", what="eps", low=0)
    with pytest.raises(ForwardguardError, match="guidance must be a finite number"):
        check_finite(math.nan, "guidance")


_decimal = st.builds(
    lambda mantissa, exponent: f"{mantissa}e{exponent}",
    st.decimals(allow_nan=False, allow_infinity=False, places=6, min_value=-(10**6), max_value=10**6),
    st.integers(-MAX_EXPONENT, MAX_EXPONENT),
)


@given(st.text(max_size=64))
def test_any_text_parses_to_a_finite_number_or_an_error(text: str) -> None:
    try:
        value = parse_number(text)
    except ForwardguardError:
        return
    assert math.isfinite(value)
    assert len(text.strip()) <= MAX_LENGTH


@given(_decimal, _decimal)
def test_a_fraction_of_decimals_is_their_exact_quotient(numerator: str, denominator: str) -> None:
    if len(numerator) + len(denominator) + 1 > MAX_LENGTH:
        return
    if Fraction(denominator) == 0:
        with pytest.raises(ForwardguardError, match="divides by zero"):
            parse_number(f"{numerator}/{denominator}")
        return
    assert parse_number(f"{numerator}/{denominator}") == float(Fraction(numerator) / Fraction(denominator))


@given(st.integers(MAX_EXPONENT + 1, 10**12))
def test_every_exponent_beyond_the_bound_is_refused(exponent: int) -> None:
    for sign in ("", "-", "+"):
        with pytest.raises(ForwardguardError):
            parse_number(f"1e{sign}{exponent}")
