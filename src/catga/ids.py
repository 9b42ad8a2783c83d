"""Snowflake ids: 63-bit, time-ordered, unique per worker, generated without I/O.

An id packs three fields, most significant first::

    0 | timestamp (ms since the layout's epoch) | worker id | sequence

The default layout is 44/8/11 bits with epoch 2024-01-01T00:00:00Z: 256 workers, 2048 ids per
millisecond per worker, about 557 years of lifespan. Other layouts are validated on creation and
four presets cover the usual trade-offs (see :class:`SnowflakeLayout`).

One :class:`SnowflakeIdGenerator` is thread-safe: ids are unique and strictly increasing across all
threads and asyncio tasks that share it. When the sequence of a millisecond is used up, the
generator waits for the next millisecond. When the wall clock moves backwards, it waits up to
``max_backwards_ms`` for the clock to catch up and otherwise raises
:class:`ClockMovedBackwardsError`; it never returns a duplicate. Distinct processes must use
distinct worker ids.

Example:
    >>> gen = SnowflakeIdGenerator(worker_id=3)
    >>> a, b = gen.next_id(), gen.next_id()
    >>> a < b and gen.parse(a).worker_id == 3
    True
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from itertools import count, islice
from typing import Any

from catga._id_layout import DEFAULT_EPOCH_MS, SnowflakeLayout, SnowflakeParts, check_int
from catga.errors import CatgaError, ConfigurationError

__all__ = (
    "DEFAULT_EPOCH_MS",
    "WORKER_ID_ENV",
    "ClockMovedBackwardsError",
    "ClockStalledError",
    "SnowflakeIdGenerator",
    "SnowflakeLayout",
    "SnowflakeParts",
    "default_generator",
    "new_id",
)

WORKER_ID_ENV = "CATGA_WORKER_ID"
"""Environment variable read when no worker id is given."""

_OVERFLOW_POLL_S = 0.0001  # poll interval while waiting for the next millisecond
_STALL_LIMIT_S = 1.0  # a clock that does not advance for this long is broken
# Free-threaded CPython (3.13t+) can turn the GIL off; next_id() then takes its lock on every call.
_GIL_ENABLED: bool = getattr(sys, "_is_gil_enabled", lambda: True)()


class ClockMovedBackwardsError(CatgaError):
    """Raised when the clock went back further than ``max_backwards_ms`` allows.

    The generator first waits up to ``max_backwards_ms`` for the clock to catch up with the last
    timestamp it used; it raises only when that is not enough, so that no id is ever repeated.

    Attributes:
        last_ms: the last timestamp used for an id (Unix ms).
        now_ms: the clock reading that was behind it (Unix ms).
        max_backwards_ms: the bound that was exceeded.
    """

    def __init__(self, last_ms: int, now_ms: int, max_backwards_ms: int) -> None:
        self.last_ms = last_ms
        self.now_ms = now_ms
        self.max_backwards_ms = max_backwards_ms
        super().__init__(
            f"clock moved backwards by {last_ms - now_ms} ms (last id at {last_ms} ms, clock now "
            f"{now_ms} ms), more than max_backwards_ms={max_backwards_ms}; refusing to generate "
            "ids that could repeat. Fix the clock (NTP slewing, not stepping) or raise "
            "max_backwards_ms"
        )


class ClockStalledError(CatgaError):
    """Raised when the sequence of a millisecond is used up and the clock does not advance.

    A real clock always moves on within a millisecond; this guards against a frozen custom clock
    so that the generator fails instead of hanging.

    Attributes:
        last_ms: the millisecond whose sequence is exhausted (Unix ms).
    """

    def __init__(self, last_ms: int) -> None:
        self.last_ms = last_ms
        super().__init__(
            f"the sequence for {last_ms} ms is used up and the clock has not advanced for "
            f"{_STALL_LIMIT_S} s; check the clock passed to SnowflakeIdGenerator"
        )


def _worker_id_from_env() -> int:
    raw = os.environ.get(WORKER_ID_ENV, "").strip()
    if not raw:
        return 0
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(
            f"{WORKER_ID_ENV}={raw!r} is not an integer; set it to this process's worker id"
        ) from None


class SnowflakeIdGenerator:
    """Generates unique, strictly increasing ids for one worker. Thread-safe.

    A mutex guards a few integer operations, so ids are unique and strictly increasing across every
    thread and asyncio task using the same generator. Processes that run
    at the same time must use different worker ids.

    Args:
        worker_id: this worker's id; ``None`` reads ``CATGA_WORKER_ID`` from the environment and
            falls back to 0.
        layout: the bit layout; :meth:`SnowflakeLayout.default` when omitted.
        clock: returns the current time in Unix milliseconds; the wall clock when omitted.
        max_backwards_ms: how long to wait for a clock that moved backwards to catch up before
            raising :class:`ClockMovedBackwardsError`.
        sleep: used to wait (clock moved backwards, or sequence used up); injectable for tests.

    Raises:
        ConfigurationError: the worker id is not an int or outside ``0..layout.max_worker_id``, or
            ``max_backwards_ms`` is negative.
    """

    # Hot-path state. ``_window`` is one tuple, replaced whole (never mutated) under ``_lock``:
    #   (lo, hi, counter, id_max): clock readings lo <= now < hi fall in the current millisecond
    #   (clock units: ns for the default clock, ms for a custom one, so the common case needs no
    #   division); ``counter`` (itertools.count) yields that millisecond's ids from its first free one;
    #   ids above id_max belong to no millisecond and are never returned.
    # ``_tick`` is the millisecond (since the epoch) of ``_window``, -1 before the first id.
    __slots__ = (
        "_clock",
        "_div",
        "_epoch",
        "_guard",
        "_layout",
        "_lock",
        "_max_backwards_ms",
        "_max_seq",
        "_max_tick",
        "_shift",
        "_sleep",
        "_tick",
        "_window",
        "_worker_id",
        "_worker_part",
    )

    def __init__(
        self,
        worker_id: int | None = None,
        *,
        layout: SnowflakeLayout | None = None,
        clock: Callable[[], int] | None = None,
        max_backwards_ms: int = 5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._layout = layout = layout if layout is not None else SnowflakeLayout()
        if check_int("max_backwards_ms", max_backwards_ms) < 0:
            raise ConfigurationError(f"max_backwards_ms must be >= 0, got {max_backwards_ms}")
        self._max_backwards_ms = max_backwards_ms
        # The default clock is the C function time_ns (no Python frame on the hot path).
        self._clock: Callable[[], int] = time.time_ns if clock is None else clock
        self._div = 1_000_000 if clock is None else 1
        self._sleep = sleep
        self._epoch = layout.epoch_ms
        self._shift = layout.worker_bits + layout.sequence_bits
        self._max_seq = layout.max_sequence
        self._max_tick = layout.max_timestamp
        self._lock = threading.Lock()
        self._guard: Callable[[], None] | None = None  # called before each new window (lease checks)
        self._tick = -1
        self._window: tuple[int, int, count[int], int] = (0, 0, count(), -1)  # empty: lo == hi
        self._worker_id = self._worker_part = 0
        self._set_worker_id(_worker_id_from_env() if worker_id is None else worker_id)

    def _set_worker_id(self, worker_id: int) -> None:
        layout = self._layout
        if check_int("worker_id", worker_id) < 0 or worker_id > layout.max_worker_id:
            raise ConfigurationError(
                f"worker_id {worker_id} is out of range: this layout allows "
                f"0..{layout.max_worker_id} ({layout.worker_bits} worker bits); "
                "give each process a distinct id in that range"
            )
        self._worker_id = worker_id
        self._worker_part = worker_id << layout.sequence_bits

    @property
    def worker_id(self) -> int:
        """This generator's worker id."""
        return self._worker_id

    @property
    def layout(self) -> SnowflakeLayout:
        """The bit layout of the ids."""
        return self._layout

    @property
    def max_backwards_ms(self) -> int:
        """How long a clock that moved backwards is waited for before raising."""
        return self._max_backwards_ms

    if _GIL_ENABLED:

        def next_id(self) -> int:
            """Return a new id, greater than every id this generator returned before.

            Raises:
                ClockMovedBackwardsError: the clock went back more than ``max_backwards_ms``.
                ClockStalledError: a custom clock stopped while the sequence was used up.
                ConfigurationError: the clock is before the epoch or past the layout's lifespan.
            """
            # Lock-free while the clock stays in the current millisecond: the window is read as one
            # tuple and its counter hands out each value once (a C call, atomic under the GIL). A
            # caller that read a window just replaced overlaps the call that replaced it, so its
            # smaller id still respects the order of calls; a new millisecond, a used-up sequence or
            # a clock that moved back take the lock.
            lo, hi, counter, id_max = self._window
            now = self._clock()
            if lo <= now < hi:
                nid = next(counter)
                if nid <= id_max:
                    return nid
            with self._lock:  # read the clock again: this thread may have waited for the lock
                return self._take(self._clock(), 1)[0]

    else:  # pragma: no cover - free-threaded CPython: no GIL makes the counter's step atomic

        def next_id(self) -> int:
            """Return a new id, greater than every id this generator returned before."""
            with self._lock:
                return self._take(self._clock(), 1)[0]

    def next_ids(self, n: int) -> list[int]:
        """Return ``n`` new ids in increasing order, reserved under a single lock hold.

        Within a millisecond the ids are consecutive integers; when ``n`` is more than the
        sequence has left, the batch continues in the following milliseconds.

        Raises:
            ValueError: ``n`` is negative.
            ClockMovedBackwardsError: as for :meth:`next_id`.
            ClockStalledError: as for :meth:`next_id`.
            ConfigurationError: as for :meth:`next_id`.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        out: list[int] = []
        with self._lock:
            while n > 0:
                got = self._take(self._clock(), n)
                out.extend(got)
                n -= len(got)
        return out

    def next_id_str(self) -> str:
        """Return :meth:`next_id` as a decimal string, for JSON readers without 64-bit ints."""
        return str(self.next_id())

    def parse(self, snowflake_id: int) -> SnowflakeParts:
        """Split an id into timestamp (Unix ms), worker id and sequence.

        Raises:
            ValueError: the id is not a non-negative 63-bit int.
        """
        return self._layout.parse(snowflake_id)

    def _take(self, now: int, n: int) -> list[int]:
        """Between 1 and ``n`` consecutive new ids, waiting as the policy says. Lock held.

        A millisecond can give ids when it is past the last one (a new window opens) or equal to it
        with sequence left. The time waited is counted from the requested sleeps, so the bounds hold
        with a fake ``sleep``.
        """
        if self._guard is not None:
            self._guard()
        waited_s = 0.0
        while True:
            tick = now // self._div - self._epoch
            if tick < 0 or tick > self._max_tick:
                raise self._out_of_range(tick)
            last = self._tick
            if tick >= last:
                if tick > last:
                    self._open(tick)
                _, _, counter, id_max = self._window
                # One C call: under the GIL no lock-free next_id() interleaves, so these are consecutive.
                got = list(islice(counter, min(n, self._max_seq + 1)))
                if got[0] <= id_max:
                    return got[: id_max - got[0] + 1]
                if waited_s >= _STALL_LIMIT_S:  # sequence used up and the clock does not move
                    raise ClockStalledError(last + self._epoch)
                delay = _OVERFLOW_POLL_S
            else:
                behind = last - tick
                if waited_s * 1000 + behind > self._max_backwards_ms:
                    raise ClockMovedBackwardsError(
                        last + self._epoch, tick + self._epoch, self._max_backwards_ms
                    )
                delay = behind / 1000
            self._sleep(delay)
            waited_s += delay
            now = self._clock()

    def _adopt(self, worker_id: int, guard: Callable[[], None] | None) -> None:
        """Switch to ``worker_id`` and install ``guard`` (see :mod:`catga.worker_lease`).

        ``guard()`` runs before every new millisecond window is opened (at least once per millisecond
        in which ids are drawn) and may raise to refuse ids. Ids drawn after the switch are still
        greater than every earlier id: if ids were drawn in the current millisecond, the next one
        waits for the following millisecond.
        """
        with self._lock:
            self._adopt_locked(worker_id, guard)

    def _invalidate(self) -> None:
        """End the current millisecond's window: the next id goes through the lock (and the guard)."""
        with self._lock:
            self._window = (0, 0, count(1), 0)

    def _use_clock(self, clock_ns: Callable[[], int] | None, resume: Any = None) -> Any:
        """Read ``clock_ns`` (Unix ns; None: the wall clock) from now on, for :func:`catga.clock.set_clock`.

        Args:
            clock_ns: the new clock.
            resume: a state this method returned before: continue from it (the same clock's last
                millisecond and sequence, so no id is handed out twice); None: the order restarts at
                the new clock's time, even an earlier one.

        Returns:
            the state left behind, to resume it later.
        """
        with self._lock:
            left = (self._clock, self._div, self._tick, self._window)
            if resume is not None:
                self._clock, self._div, self._tick, self._window = resume
            else:
                self._clock = time.time_ns if clock_ns is None else clock_ns
                self._div = 1_000_000
                self._tick = -1
                self._window = (0, 0, count(1), 0)
            return left

    def _adopt_locked(self, worker_id: int, guard: Callable[[], None] | None) -> None:
        self._set_worker_id(worker_id)
        self._guard = guard
        # An exhausted window: the current millisecond (if any) gives no more ids of the old worker id.
        self._window = (0, 0, count(1), 0)

    def _open(self, tick: int) -> None:
        """Make ``tick`` (> the last tick) current with its whole sequence free. Lock held."""
        lo = (tick + self._epoch) * self._div
        base = (tick << self._shift) | self._worker_part
        self._tick = tick
        self._window = (lo, lo + self._div, count(base), base + self._max_seq)

    def _out_of_range(self, tick: int) -> ConfigurationError:
        now = tick + self._epoch
        if tick < 0:
            return ConfigurationError(
                f"clock reads {now} ms, before the layout epoch {self._epoch} ms; "
                "use an epoch in the past or fix the clock"
            )
        return ConfigurationError(
            f"clock reads {now} ms, past the end of the layout ({self._layout.timestamp_bits} "
            f"timestamp bits from epoch {self._epoch} ms); use a layout with more timestamp bits"
        )

    def __repr__(self) -> str:
        return f"SnowflakeIdGenerator(worker_id={self._worker_id}, layout={self._layout!r})"


class _DefaultGenerator(SnowflakeIdGenerator):
    """The process-wide generator: created at import, reads its worker id on first use.

    Until then its window is empty (as every new generator's), so :meth:`next_id` takes the locked
    path, which reads the worker id once; the lock-free path pays nothing for the laziness.
    """

    __slots__ = ("_configured",)

    def __init__(self) -> None:
        super().__init__(0)
        self._configured = False

    def _configure(self) -> None:
        # Called with the lock held.
        if not self._configured:
            self._set_worker_id(_worker_id_from_env())
            self._configured = True

    def _take(self, now: int, n: int) -> list[int]:
        if not self._configured:
            self._configure()
        return super()._take(now, n)

    def _adopt_locked(self, worker_id: int, guard: Callable[[], None] | None) -> None:
        self._configured = True  # the adopted id wins over CATGA_WORKER_ID
        super()._adopt_locked(worker_id, guard)

    @property
    def worker_id(self) -> int:
        """This generator's worker id, read from ``CATGA_WORKER_ID`` on first use."""
        if not self._configured:
            with self._lock:
                self._configure()
        return self._worker_id


_DEFAULT = _DefaultGenerator()


def default_generator() -> SnowflakeIdGenerator:
    """Return the process-wide generator used by :func:`new_id`.

    It uses the default layout and takes its worker id from ``CATGA_WORKER_ID`` (else 0), read
    when the first id is generated. Set that variable before generating ids.
    """
    return _DEFAULT


new_id: Callable[[], int] = _DEFAULT.next_id
"""Return a new id from :func:`default_generator` (the bound method itself: no extra call)."""
