"""A clock that moves only when a test says so (see :mod:`catga.clock` for what reads it).

::

    clock = FakeClock()                  # 2025-01-01 00:00:00 UTC (or start=...)
    with use_clock(clock), clock.drive_loop():
        async with app:
            ...
            clock.advance(30)            # 30 s later: sleepers and timers due by then run

:meth:`FakeClock.sleep` waits until the clock has been advanced past the sleeper's deadline, so code
that sleeps on the catga clock (schedules) runs at the test's pace, never on real time.
:meth:`FakeClock.drive_loop` does the same for the event loop's own clock, which ``asyncio.sleep``,
``asyncio.timeout`` and ``loop.call_later`` read: catga's timeout behavior, retry backoff, redelivery
timers and RPC timeouts then wait for :meth:`FakeClock.advance` too.
Not thread-safe: use it from the test's event loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime

__all__ = ("DEFAULT_START", "FakeClock")

DEFAULT_START = 1_735_689_600.0
"""Where a :class:`FakeClock` starts by default: 2025-01-01 00:00:00 UTC, in Unix seconds."""


class FakeClock:
    """A controllable :class:`~catga.clock.Clock`.

    Args:
        start: the wall-clock time to start at: Unix seconds or an aware ``datetime``; default
            :data:`DEFAULT_START` (2025-01-01 00:00:00 UTC). A fixed time in the past makes tests
            reproducible and keeps the ids drawn under it apart from the wall clock's (a Snowflake id
            holds its millisecond: ids of one millisecond drawn under two clocks could be equal).

    Attributes:
        sleeping: how many :meth:`sleep` calls are waiting.
    """

    def __init__(self, start: float | datetime | None = None) -> None:
        if isinstance(start, datetime):
            if start.tzinfo is None:
                raise ValueError(f"start={start!r} has no time zone: pass an aware datetime (e.g. UTC)")
            start = start.timestamp()
        self._ns = round((DEFAULT_START if start is None else start) * 1e9)
        self._mono_ns = 0
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._slept = asyncio.Event()  # set each time a sleeper starts waiting

    def time(self) -> float:
        """Unix seconds."""
        return self._ns / 1e9

    def time_ns(self) -> int:
        """Unix nanoseconds."""
        return self._ns

    def monotonic(self) -> float:
        """Seconds advanced since this clock was made."""
        return self._mono_ns / 1e9

    def now(self) -> datetime:
        """The clock's time as an aware UTC datetime."""
        from datetime import UTC

        return datetime.fromtimestamp(self.time(), tz=UTC)

    @property
    def sleeping(self) -> int:
        """How many sleepers are waiting for the clock to move."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock was advanced by ``seconds`` (a zero or negative sleep just yields)."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono_ns + round(seconds * 1e9), next(self._seq), fut))
        self._slept.set()
        await fut

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` and wake every sleeper due by then (in deadline order).

        Raises:
            ValueError: ``seconds`` is negative (use :meth:`set_time` to move the wall clock back).
        """
        if seconds < 0:
            raise ValueError(f"a clock only advances: got {seconds} s; set_time() moves the wall time")
        step = round(seconds * 1e9)
        self._ns += step
        self._mono_ns += step
        sleepers = self._sleepers
        while sleepers and sleepers[0][0] <= self._mono_ns:
            _, _, fut = heapq.heappop(sleepers)
            if not fut.done():
                fut.set_result(None)

    def set_time(self, when: float | datetime) -> None:
        """Set the wall time (Unix seconds or an aware datetime), backwards too; monotonic time and
        sleepers are unaffected (like an NTP step on a real machine)."""
        if isinstance(when, datetime):
            if when.tzinfo is None:
                raise ValueError(f"{when!r} has no time zone: pass an aware datetime (e.g. UTC)")
            when = when.timestamp()
        self._ns = round(when * 1e9)

    async def wait_for_sleepers(self, count: int = 1, *, timeout: float = 5.0) -> None:
        """Wait until at least ``count`` sleepers wait on this clock; ``timeout`` is in *real*
        seconds, also while :meth:`drive_loop` holds the loop's clock still.

        Raises:
            TimeoutError: fewer were sleeping after ``timeout`` real seconds.
        """
        loop = asyncio.get_running_loop()
        waiter = asyncio.ensure_future(self._until_sleeping(count))
        # A real-time deadline: the loop's own timers may be frozen by drive_loop().

        def expire() -> None:
            with suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
                loop.call_soon_threadsafe(waiter.cancel)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            await waiter
        except asyncio.CancelledError:
            if not waiter.cancelled() or asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise  # the caller was cancelled, not the deadline
            raise TimeoutError(f"{self.sleeping} of {count} sleepers after {timeout} s") from None
        finally:
            timer.cancel()

    async def _until_sleeping(self, count: int) -> None:
        while self.sleeping < count:
            self._slept.clear()
            await self._slept.wait()

    @contextmanager
    def drive_loop(self, loop: asyncio.AbstractEventLoop | None = None) -> Iterator[FakeClock]:
        """Within the block, the event loop's clock is this clock: its timers wait for :meth:`advance`.

        ``asyncio.sleep``, ``asyncio.timeout``, ``wait_for`` and ``loop.call_later`` read the loop's
        clock, so catga's timeout behavior, retry backoff, transport redelivery timers and RPC timeouts
        fire when the test advances the clock past them, at once, and never by themselves. The loop's
        time goes on from where it was; afterwards it is the real clock again (a timer set in the block
        for a time the real clock has not reached yet fires that much later).

        Args:
            loop: the loop to drive (default: the running loop). Needs the standard asyncio loop
                (uvloop's timers do not read an overridable clock).

        Raises:
            RuntimeError: no running loop, a loop that is not an ``asyncio.BaseEventLoop``, or a loop
                some clock already drives.
        """
        loop = asyncio.get_running_loop() if loop is None else loop
        if not isinstance(loop, asyncio.BaseEventLoop):
            raise RuntimeError(
                f"drive_loop() needs the standard asyncio event loop, got {type(loop).__name__}"
            )
        if "time" in vars(loop):
            raise RuntimeError("this event loop's clock is already driven by a FakeClock")
        base = loop.time() - self._mono_ns / 1e9

        def time() -> float:
            return base + self._mono_ns / 1e9

        loop.time = time  # type: ignore[method-assign]  # every timer of BaseEventLoop reads self.time()
        try:
            yield self
        finally:
            del loop.time

    def __repr__(self) -> str:
        return f"FakeClock({self.now().isoformat()})"
