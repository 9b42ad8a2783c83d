"""In-memory schedules: the reference :class:`~catga.protocols.ScheduleStore` (a timer heap).

Nothing survives the process: this store gives tests and single-process apps the *semantics* of
scheduling (due times, leases, retries, cancel), not its durability.

Schedules sit in a dict by id and in a heap of ``(available_at, due_at, id)`` (``available_at`` is the
later of the due time and the end of a lease or retry delay); stale heap entries are skipped when
popped, so every operation is ``O(log n)``. A waiting :meth:`MemoryScheduleStore.claim_due` sleeps
until the earliest entry falls due or another call changes the heap.

Thread-safety: every method is thread-safe (one ``threading.Lock`` around each short, await-free
step); waiters on other event loops are woken on their own loop. Schedules are copied on the way in
and out, so callers never share state with the store.
"""

from __future__ import annotations

import asyncio
import heapq
import threading
import time
from collections.abc import Callable

import msgspec

from catga.errors import ConfigurationError
from catga.memory._wakeup import Waiter, notify
from catga.protocols import Schedule, validate_identifier

__all__ = ("MemoryScheduleStore",)


def _copy(schedule: Schedule) -> Schedule:
    return msgspec.structs.replace(schedule, headers=dict(schedule.headers))


class MemoryScheduleStore:
    """Schedules in process memory (see the module docs).

    Args:
        clock: the unix-time clock that decides what is due (a test can pass its own).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._schedules: dict[str, Schedule] = {}
        self._available: dict[str, float] = {}  # id -> when it may be claimed (due time, lease end)
        self._heap: list[tuple[float, float, str]] = []
        self._lock = threading.Lock()
        self._waiters: list[Waiter] = []

    def _push(self, id: str, at: float, due_at: float) -> None:
        self._available[id] = at
        heapq.heappush(self._heap, (at, due_at, id))

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        notify(waiters)

    async def add(self, schedule: Schedule) -> bool:
        """Store ``schedule``; False (and nothing changed) when its id is already stored.

        Raises:
            ConfigurationError: not a :class:`~catga.protocols.Schedule`.
            InvalidIdentifierError: an invalid id.
        """
        if not isinstance(schedule, Schedule):
            raise ConfigurationError(f"add() takes a Schedule, got {schedule!r}")
        validate_identifier(schedule.id, "schedule id")
        copy = _copy(schedule)
        with self._lock:
            if copy.id in self._schedules:
                return False
            self._schedules[copy.id] = copy
            self._push(copy.id, copy.due_at, copy.due_at)
            self._changed()
        return True

    async def claim_due(self, limit: int = 100, lease: float = 30.0, wait: float = 0.0) -> list[Schedule]:
        """Lease up to ``limit`` due schedules, earliest first; wait up to ``wait`` s when none is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            with self._lock:
                picked = self._claim(limit, lease)
                if picked or limit <= 0:
                    return picked
                left = deadline - loop.time()
                if left <= 0:
                    return []
                if self._heap:
                    left = min(left, max(self._heap[0][0] - self.clock(), 0.001))
                fut: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, fut))
            try:
                async with asyncio.timeout(left):
                    await fut
            except TimeoutError:
                pass

    def _claim(self, limit: int, lease: float) -> list[Schedule]:
        now = self.clock()
        heap, available, schedules = self._heap, self._available, self._schedules
        picked: list[Schedule] = []
        while heap and len(picked) < limit and heap[0][0] <= now:
            at, due_at, id = heapq.heappop(heap)
            schedule = schedules.get(id)
            if schedule is None or available.get(id) != at or schedule.due_at != due_at:
                continue  # stale entry: cancelled, completed or re-leased since
            self._push(id, now + lease, due_at)
            picked.append(_copy(schedule))
        return picked

    def _current(self, schedule: Schedule) -> Schedule | None:
        stored = self._schedules.get(schedule.id)
        return stored if stored is not None and stored.due_at == schedule.due_at else None

    async def complete(self, schedule: Schedule, next_due: float | None = None) -> None:
        """Delete the schedule, or move it to ``next_due``; a no-op for another occurrence."""
        with self._lock:
            stored = self._current(schedule)
            if stored is None:
                return
            if next_due is None:
                del self._schedules[stored.id]
                self._available.pop(stored.id, None)
            else:
                stored.due_at, stored.attempts, stored.last_error = next_due, 0, None
                self._push(stored.id, next_due, next_due)
            self._changed()

    async def retry(self, schedule: Schedule, retry_at: float, error: str) -> None:
        """Count a failed delivery; claimable again at ``retry_at``. A no-op for another occurrence."""
        with self._lock:
            stored = self._current(schedule)
            if stored is None:
                return
            stored.attempts += 1
            stored.last_error = error
            self._push(stored.id, max(retry_at, stored.due_at), stored.due_at)
            self._changed()

    async def cancel(self, id: str) -> bool:
        """Delete the schedule; False when there is none."""
        with self._lock:
            if self._schedules.pop(id, None) is None:
                return False
            self._available.pop(id, None)
            return True

    async def get(self, id: str) -> Schedule | None:
        """The schedule as stored, or None."""
        with self._lock:
            stored = self._schedules.get(id)
            return None if stored is None else _copy(stored)

    def __len__(self) -> int:
        return len(self._schedules)

    async def aclose(self) -> None:
        """Nothing to release; idempotent."""

    async def __aenter__(self) -> MemoryScheduleStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
