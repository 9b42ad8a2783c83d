"""Cron expressions of recurring schedules (catga._cron)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from catga._cron import Cron
from catga.errors import ConfigurationError


def _t(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


def _next(expr: str, *after: int) -> datetime:
    return datetime.fromtimestamp(Cron(expr).next_after(_t(*after)), UTC)


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("* * * * *", (2030, 1, 1, 10, 0, 30), (2030, 1, 1, 10, 1)),
        ("* * * * *", (2030, 1, 1, 10, 0), (2030, 1, 1, 10, 1)),  # strictly after
        ("*/15 * * * *", (2030, 1, 1, 10, 16), (2030, 1, 1, 10, 30)),
        ("0 8 * * mon-fri", (2030, 1, 4, 9, 0), (2030, 1, 7, 8, 0)),  # Fri 9:00 -> Mon 8:00
        ("0 0 1 * *", (2030, 12, 15), (2031, 1, 1)),
        ("30 2 29 feb *", (2030, 3, 1), (2032, 2, 29, 2, 30)),  # the next leap year
        ("0 12 13 * fri", (2030, 1, 1), (2030, 1, 4, 12, 0)),  # both days restricted: either
        ("0 0 * * 7", (2030, 1, 1), (2030, 1, 6)),  # 7 is Sunday
        ("5-10/5 1,3 * jan-feb *", (2030, 1, 1, 1, 6), (2030, 1, 1, 1, 10)),
        ("@hourly", (2030, 1, 1, 10, 0, 1), (2030, 1, 1, 11, 0)),
        ("@daily", (2030, 1, 1, 10), (2030, 1, 2)),
        ("@weekly", (2030, 1, 1), (2030, 1, 6)),
        ("@yearly", (2030, 1, 1), (2031, 1, 1)),
    ],
)
def test_next_after(expr: str, after: tuple[int, ...], expected: tuple[int, ...]) -> None:
    assert _next(expr, *after) == datetime(*expected, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* * * *", "5 fields"),
        ("60 * * * *", "out of 0-59"),
        ("* 24 * * *", "out of 0-23"),
        ("* * 0 * *", "out of 1-31"),
        ("* * * 13 *", "out of 1-12"),
        ("* * * foo *", "not a number"),
        ("*/0 * * * *", "step"),
        ("10-5 * * * *", "backwards"),
    ],
)
def test_a_malformed_expression_names_the_field(expr: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Cron(expr)


def test_an_expression_that_matches_no_date_says_so() -> None:
    with pytest.raises(ConfigurationError, match="matches no date"):
        Cron("0 0 30 2 *").next_after(_t(2030, 1, 1))
