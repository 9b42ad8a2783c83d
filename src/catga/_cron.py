"""Cron expressions for recurring schedules (private; standard library only).

Five fields, in UTC: ``minute hour day-of-month month day-of-week``. A field is ``*``, a number, a
range ``a-b``, a list ``a,b,c`` of those, each optionally with a step ``/n`` (``*/15``, ``8-18/2``).
Months and days of week also take names (``jan``..``dec``, ``sun``..``sat``; day 7 is Sunday too).
As in Vixie cron, when both day fields are restricted a day matches if **either** does. Macros:
``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily`` (``@midnight``), ``@hourly``.

:meth:`Cron.next_after` finds the first matching minute strictly after a time, field by field (at
most a few hundred steps, whatever the expression).
"""

from __future__ import annotations

import datetime
import functools

from catga.errors import ConfigurationError

__all__ = ("Cron",)

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}
_DAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_NONE: dict[str, int] = {}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, _NONE), ("hour", 0, 23, _NONE), ("day of month", 1, 31, _NONE),
    ("month", 1, 12, _MONTHS), ("day of week", 0, 7, _DAYS),
)  # fmt: skip
_LIMIT = 2000  # steps; a valid expression needs far fewer, "0 0 30 2 *" (Feb 30) would need all


class Cron:
    """A parsed cron expression (see the module docs).

    Raises:
        ConfigurationError: a malformed expression; the message names the field.
    """

    __slots__ = ("days", "dom_any", "dow_any", "expression", "hours", "minutes", "months", "weekdays")

    def __init__(self, expression: str) -> None:
        if not isinstance(expression, str):
            raise ConfigurationError(f"a cron expression is a str, got {type(expression).__name__}")
        text = _MACROS.get(expression.strip().lower(), expression)
        parts = text.split()
        if len(parts) != 5:
            raise ConfigurationError(
                f"cron {expression!r} must have 5 fields (minute hour day-of-month month day-of-week) "
                "or be a macro such as @hourly"
            )
        sets = [_field(part, *spec, expression) for part, spec in zip(parts, _FIELDS, strict=True)]
        self.expression = expression
        self.minutes, self.hours, self.days, self.months, weekdays = sets
        self.weekdays = frozenset(d % 7 for d in weekdays)
        self.dom_any = parts[2] == "*"
        self.dow_any = parts[4] == "*"

    def _day_matches(self, day: datetime.datetime) -> bool:
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        if self.dom_any or self.dow_any:
            return dom and dow
        return dom or dow

    def next_after(self, t: float) -> float:
        """The first matching minute strictly after unix time ``t``.

        Raises:
            ConfigurationError: the expression matches no date (February 30th, say).
        """
        at = datetime.datetime.fromtimestamp(t, datetime.UTC).replace(second=0, microsecond=0)
        at += datetime.timedelta(minutes=1)
        for _ in range(_LIMIT):
            if at.month not in self.months:
                year, month = (at.year + 1, 1) if at.month == 12 else (at.year, at.month + 1)
                at = at.replace(year=year, month=month, day=1, hour=0, minute=0)
            elif not self._day_matches(at):
                at = at.replace(hour=0, minute=0) + datetime.timedelta(days=1)
            elif at.hour not in self.hours:
                at = at.replace(minute=0) + datetime.timedelta(hours=1)
            elif at.minute not in self.minutes:
                at += datetime.timedelta(minutes=1)
            else:
                return at.timestamp()
        raise ConfigurationError(f"cron {self.expression!r} matches no date")

    def __repr__(self) -> str:
        return f"Cron({self.expression!r})"


@functools.lru_cache(maxsize=256)
def parse(expression: str) -> Cron:
    """A cached :class:`Cron` for ``expression``."""
    return Cron(expression)


def _field(
    part: str, name: str, low: int, high: int, names: dict[str, int], expression: str
) -> frozenset[int]:
    values: set[int] = set()

    def number(text: str) -> int:
        value = names.get(text.lower()) if names else None
        if value is None:
            if not text.isdigit():
                raise ConfigurationError(f"cron {expression!r}: {name} {text!r} is not a number")
            value = int(text)
        if not low <= value <= high:
            raise ConfigurationError(f"cron {expression!r}: {name} {value} is out of {low}-{high}")
        return value

    for item in part.split(","):
        base, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ConfigurationError(f"cron {expression!r}: {name} step {step_text!r} must be >= 1")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = number(a), number(b)
            if start > end:
                raise ConfigurationError(f"cron {expression!r}: {name} range {base!r} is backwards")
        else:
            start = number(base)
            end = high if step_text else start
        values.update(range(start, end + 1, step))
    return frozenset(values)
