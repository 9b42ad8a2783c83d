"""The clock catga reads: one seam that tests can replace with a controllable clock.

catga code that needs the time asks :func:`get_clock` for it, never :mod:`time` directly, so a test
can run with :class:`catga.testing.FakeClock` and move time by hand::

    from catga.clock import use_clock
    from catga.testing import FakeClock

    clock = FakeClock()
    with use_clock(clock):
        ...                      # created-at stamps and the default generator's ids follow clock
        clock.advance(60)        # a minute later, at once

What reads it today: the ``created_at`` of metadata catga generates (:class:`~catga.context.Context`,
:func:`~catga.messages.new_metadata`) and the timestamp part of the process's Snowflake ids
(:func:`catga.ids.new_id`; a generator built with its own ``clock=`` keeps it). New code that waits or
schedules (timers, scheduled messages) reads :meth:`Clock.time` and waits with :meth:`Clock.sleep`.
``asyncio`` timeouts and timers follow the event loop's own clock instead; in tests
:meth:`catga.testing.FakeClock.drive_loop` makes that one the fake clock too.

The current clock is process-wide (every thread and task sees the same one): replace it only in
tests, from one test at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = ("SYSTEM_CLOCK", "Clock", "SystemClock", "get_clock", "set_clock", "use_clock")


@runtime_checkable
class Clock(Protocol):
    """What catga asks of a clock."""

    def time(self) -> float:
        """Wall-clock time: Unix seconds."""
        ...

    def time_ns(self) -> int:
        """Wall-clock time: Unix nanoseconds (Snowflake ids read this)."""
        ...

    def monotonic(self) -> float:
        """Seconds of a clock that never goes back, for durations and deadlines."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock: :func:`time.time`, :func:`time.time_ns`, :func:`time.monotonic`,
    :func:`asyncio.sleep`."""

    def time(self) -> float:
        """Unix seconds."""
        return time.time()

    def time_ns(self) -> int:
        """Unix nanoseconds."""
        return time.time_ns()

    def monotonic(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep(seconds)``."""
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()
"""The default clock."""

_clock: Clock = SYSTEM_CLOCK
_system_ids: Any = None  # the default id generator's wall-clock state while another clock is in use


def get_clock() -> Clock:
    """The clock catga reads now (:data:`SYSTEM_CLOCK` unless a test replaced it)."""
    return _clock


def set_clock(clock: Clock) -> Clock:
    """Make ``clock`` the one catga reads; return the previous one. Prefer :func:`use_clock`.

    The process's default Snowflake generator follows it. A replacement clock starts its own order
    (ids drawn under it are ordered among themselves, not with the wall clock's); switching back to
    :data:`SYSTEM_CLOCK` resumes the wall clock's order where it stopped, so no id is drawn twice.

    Raises:
        TypeError: ``clock`` lacks a method of :class:`Clock`.
    """
    global _clock, _system_ids
    if not isinstance(clock, Clock):
        raise TypeError(f"{clock!r} is not a catga.clock.Clock (needs time, time_ns, monotonic, sleep)")
    from catga.ids import default_generator

    previous, _clock = _clock, clock
    if clock is previous:
        return previous
    generator = default_generator()
    if clock is SYSTEM_CLOCK:  # resume the wall clock's ids where they stopped: none is drawn twice
        resume, _system_ids = _system_ids, None
        generator._use_clock(None, resume)
    else:
        left = generator._use_clock(clock.time_ns)
        if previous is SYSTEM_CLOCK:
            _system_ids = left
    return previous


C = TypeVar("C", bound=Clock)


@contextmanager
def use_clock(clock: C) -> Iterator[C]:
    """Within the block, catga reads ``clock``; the previous clock is back afterwards."""
    previous = set_clock(clock)
    try:
        yield clock
    finally:
        set_clock(previous)
