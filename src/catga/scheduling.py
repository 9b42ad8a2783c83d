"""Scheduled messages: deliver a command or an event at a time, at least once, never early.

::

    app = catga.App(scheduler="redis://127.0.0.1:6379/0")     # or memory:// (default), nats://, postgresql://
    async with app:
        sid = await app.schedule(RemindCustomer("c-1"), after=timedelta(days=3))
        await app.schedule(OrderExpired("o-1"), at=datetime(2030, 1, 1, tzinfo=UTC), id="expire-o-1")
        await app.schedule(SendReport(), every=timedelta(hours=1))   # recurring
        await app.schedule(SendDigest(), cron="0 8 * * mon-fri")      # 08:00 UTC on weekdays
        await app.cancel_schedule(sid)

A schedule is the encoded message with its metadata (message id, correlation, causation, user
headers), its due time and its kind (sent or published), kept in a
:class:`~catga.protocols.ScheduleStore`. The :class:`Scheduler` running with the app claims due
schedules with a lease and delivers them **through the normal pipeline**: a command with
``app.send`` (behaviors, idempotency, retries), an event with ``app.publish`` (local handlers, and
the transport or outbox when the type is exported). Then:

* delivered: a one-shot schedule is deleted; a recurring one moves to its next due time (missed
  occurrences while no app ran are not caught up one by one: the next due time is the first one after
  now);
* the delivery failed (a handler raised, a backend was down, a Result whose code says a retry can
  help: ``internal``, ``timeout``, ``unavailable``, ``backend``, ``retryable``, ``concurrency``,
  ``handler_not_found``): retried after a backoff, and after ``max_attempts`` failures the occurrence
  is dead-lettered (the app transport's dead-letter queue, when there is one) and logged at ERROR. A
  business failure (``business``, ``validation``, ``not_found``, ``conflict``...) is the handler's
  answer: the occurrence is done, and the answer logged at WARNING;
* the dispatcher died between claim and delivery: the lease ends and another replica (or the
  restarted app) claims it again.

**At least once, one delivery per schedule.** Every replica runs a scheduler on the same store; the
store's claim hands each due occurrence to one of them. A delivery can repeat only when a lease ends
before the delivery is recorded (a crash, or a delivery slower than ``lease``). The repeated
delivery carries the same message id (a recurring occurrence's id is derived from the schedule id and
its due time), so the idempotency behavior and consumer inboxes drop it.

**Never early.** A schedule is claimed only once the store's clock (the server's on NATS) reaches
its due time, and the scheduler checks it again against its own clock before delivering. Replicas
whose clocks disagree by more than that can deliver late, never early by catga's own clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import catga._cron as _cron
from catga._delivery import check_retry_backoff, retry_delay
from catga._outage import OutageLog
from catga.context import current_context
from catga.errors import ConfigurationError, ErrorCode, PayloadTooLargeError, UnknownMessageTypeError
from catga.messages import H_ID, Event, Metadata, Request
from catga.protocols import (
    COMMAND,
    EVENT,
    DeadLetter,
    DeadLetterQueue,
    Schedule,
    ScheduleStore,
    validate_identifier,
)

if TYPE_CHECKING:
    from catga.mediator import Mediator
    from catga.result import Result
    from catga.serialization import TypeRegistry

__all__ = (
    "RETRY_CODES",
    "Deliver",
    "ScheduleDeliveryError",
    "Scheduler",
    "due_time",
    "interval_seconds",
    "new_schedule",
    "next_due",
    "occurrence_id",
    "pipeline_delivery",
    "recurring",
)

logger = logging.getLogger("catga.scheduling")

#: Result codes after which a scheduled delivery is retried (a retry can help); others settle it.
RETRY_CODES = frozenset(
    {
        ErrorCode.INTERNAL,
        ErrorCode.TIMEOUT,
        ErrorCode.UNAVAILABLE,
        ErrorCode.BACKEND,
        ErrorCode.RETRYABLE,
        ErrorCode.CONCURRENCY,
        ErrorCode.HANDLER_NOT_FOUND,
    }
)

#: Delivers one claimed occurrence; raises to have it retried.
Deliver = Callable[[Schedule], Awaitable[None]]


class ScheduleDeliveryError(Exception):
    """A scheduled message's delivery returned a failed Result that a retry can help (see
    :data:`RETRY_CODES`); the scheduler retries the occurrence."""


def due_time(at: datetime | float | None, after: timedelta | float | None, now: float) -> float:
    """The unix time ``at`` / ``after`` name (exactly one of them).

    Args:
        at: an aware :class:`~datetime.datetime` or unix seconds.
        after: a :class:`~datetime.timedelta` or seconds from ``now`` (>= 0).
        now: the current unix time.

    Raises:
        ConfigurationError: both or neither given, a naive datetime, a negative or non-finite delay.
    """
    if (at is None) == (after is None):
        raise ConfigurationError("schedule() takes exactly one of at= (a time) or after= (a delay)")
    if at is not None:
        if isinstance(at, datetime):
            if at.tzinfo is None:
                raise ConfigurationError(
                    f"schedule(at={at!r}): a naive datetime is ambiguous; give it a timezone "
                    "(datetime(..., tzinfo=UTC)) or pass unix seconds"
                )
            due = at.timestamp()
        else:
            due = float(at)
        if not math.isfinite(due):
            raise ConfigurationError(f"schedule(at={at!r}) is not a finite time")
        return due
    delay = after.total_seconds() if isinstance(after, timedelta) else float(after)  # type: ignore[arg-type]
    if not (math.isfinite(delay) and delay >= 0):
        raise ConfigurationError(f"schedule(after={after!r}) must be a finite delay >= 0")
    return now + delay


def interval_seconds(every: timedelta | float | None) -> float:
    """``every`` in seconds, 0.0 for None (one-shot).

    Raises:
        ConfigurationError: not a positive, finite interval of at least 1 ms.
    """
    if every is None:
        return 0.0
    seconds = every.total_seconds() if isinstance(every, timedelta) else float(every)
    if not (math.isfinite(seconds) and seconds >= 0.001):
        raise ConfigurationError(f"schedule(every={every!r}) must be an interval of at least 1 ms")
    return seconds


def recurring(schedule: Schedule) -> bool:
    """True for a schedule with an interval or a cron expression."""
    return schedule.every > 0 or bool(schedule.cron)


def next_due(schedule: Schedule, now: float) -> float | None:
    """The due time after the occurrence ``schedule`` names: None for one-shot schedules, else the
    first ``due_at + k * every`` after ``now``, or the cron expression's first minute after ``now``
    (missed occurrences are skipped, not caught up)."""
    if schedule.cron:
        return _cron.parse(schedule.cron).next_after(max(now, schedule.due_at))
    every = schedule.every
    if every <= 0:
        return None
    steps = max(1, math.floor((now - schedule.due_at) / every) + 1)
    return schedule.due_at + steps * every


def occurrence_id(schedule: Schedule) -> int:
    """The message id of an occurrence: the scheduled message's own for a one-shot schedule; for a
    recurring one a 63-bit digest of the schedule id and the occurrence's due time (the same on every
    redelivery of that occurrence, distinct between occurrences)."""
    if not recurring(schedule):
        return int(schedule.headers[H_ID])
    digest = hashlib.blake2b(f"{schedule.id}@{schedule.due_at!r}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1 or 1


class Scheduler:
    """Claims due schedules from a store and delivers them (one per app; several replicas are safe).

    Args:
        store: where the schedules are.
        deliver: delivers one occurrence (the app sends or publishes it); raises to retry it.
        dead_letters: where occurrences that failed ``max_attempts`` times go (None: logged only).
        batch_size: occurrences claimed and delivered concurrently per pass.
        lease: seconds a claimed occurrence is hidden from other schedulers, and the longest a
            delivery may take (a slower one is cancelled and retried).
        poll_interval: the longest a pass waits for something to fall due (schedules added by another
            process are seen within this; the store's own adds and due times wake it at once).
        max_attempts: failed deliveries of one occurrence before it is dead-lettered.
        retry_backoff: delay before the first retry, doubled per failure.
        retry_backoff_max: the cap of that delay.
        clock: unix time, the scheduler's own check that nothing is delivered early.

    Raises:
        ConfigurationError: a count or duration out of range.
    """

    def __init__(
        self,
        store: ScheduleStore,
        deliver: Deliver,
        *,
        dead_letters: DeadLetterQueue | None = None,
        batch_size: int = 100,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        max_attempts: int = 10,
        retry_backoff: float = 0.5,
        retry_backoff_max: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if batch_size < 1 or max_attempts < 1:
            raise ConfigurationError(
                f"batch_size and max_attempts must be >= 1, got {batch_size} and {max_attempts}"
            )
        if not (lease > 0 and poll_interval > 0):
            raise ConfigurationError("lease and poll_interval must be > 0 seconds")
        check_retry_backoff(retry_backoff, retry_backoff_max)
        self.store = store
        self.deliver = deliver
        self.dead_letters = dead_letters
        self.batch_size = batch_size
        self.lease = lease
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.clock = clock
        self.delivered = 0  #: occurrences delivered since creation
        self.failed = 0  #: failed deliveries since creation
        self.dead = 0  #: occurrences dead-lettered since creation
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._waiting = False  # the loop is in claim_due: safe to cancel
        self._passes = OutageLog(logger, "scheduler pass", level=logging.ERROR)

    async def run_once(self, wait: float = 0.0) -> int:
        """Claim one batch (waiting up to ``wait`` s for one to fall due), deliver it; return its size."""
        batch = await self.store.claim_due(self.batch_size, self.lease, wait)
        if batch:
            await self._deliver_batch(batch)
        return len(batch)

    async def _deliver_batch(self, batch: list[Schedule]) -> None:
        """Deliver concurrently; every delivery finishes before this returns (none is left running).

        Raises:
            Exception: the first store failure (completing or retrying), once all are done.
        """
        outcomes = await asyncio.gather(*[self._one(s) for s in batch], return_exceptions=True)
        failure: BaseException | None = None
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # cancellation and the like
            if isinstance(outcome, Exception) and failure is None:
                failure = outcome
        if failure is not None:
            raise failure

    async def _one(self, schedule: Schedule) -> None:
        store = self.store
        early = schedule.due_at - self.clock()
        if early > 0:  # the store's clock is ahead of ours: never deliver before the due time
            await store.retry(schedule, schedule.due_at, "claimed before its due time by this clock")
            return
        try:
            async with asyncio.timeout(self.lease):  # past the lease another scheduler may take it
                await self.deliver(schedule)
        except Exception as exc:  # TimeoutError included: retried like a failure
            await self._failed(schedule, exc)
            return
        self.delivered += 1
        await store.complete(schedule, next_due(schedule, self.clock()))

    async def _failed(self, schedule: Schedule, exc: Exception) -> None:
        self.failed += 1
        attempts = schedule.attempts + 1
        error = f"scheduled delivery failed: {type(exc).__name__}: {exc}"
        if attempts < self.max_attempts:
            logger.warning(
                "schedule %s (%s), attempt %d of %d: %s", schedule.id, schedule.type_name, attempts,
                self.max_attempts, error,
            )  # fmt: skip
            delay = retry_delay(self.retry_backoff, self.retry_backoff_max, attempts)
            await self.store.retry(schedule, self.clock() + delay, error)
            return
        logger.error(
            "schedule %s (%s) due at %s is dead after %d attempt(s): %s",
            schedule.id, schedule.type_name, schedule.due_at, attempts, error,
        )  # fmt: skip
        if self.dead_letters is not None:
            await self.dead_letters.add(
                DeadLetter(
                    id=f"{schedule.id}@{occurrence_id(schedule)}",
                    source=schedule.type_name,
                    type_name=schedule.type_name,
                    body=schedule.body,
                    headers=dict(schedule.headers),
                    error=error,
                    attempts=attempts,
                    failed_at=time.time(),
                    kind=COMMAND if schedule.kind == COMMAND else EVENT,
                    message_id=str(occurrence_id(schedule)),
                )
            )
        self.dead += 1
        await self.store.complete(schedule, next_due(schedule, self.clock()))

    # -- the loop ------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the background loop runs."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the background loop (idempotent)."""
        if self._task is None or self._task.done():
            self._stopping = False
            # a context of its own: not the one of a handler that happened to start it
            self._task = asyncio.create_task(
                self._loop(), name="catga-scheduler", context=contextvars.Context()
            )

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                self._waiting = True
                try:
                    batch = await self.store.claim_due(self.batch_size, self.lease, self.poll_interval)
                finally:
                    self._waiting = False
                if batch:
                    await self._deliver_batch(batch)
                claimed = len(batch)
            except Exception as exc:  # the store is unreachable, say: log once per outage, wait, retry
                self._passes.failure(exc, f"retrying every {self.poll_interval:g} s")
                await asyncio.sleep(self.poll_interval)
                continue
            if self._passes.failing:
                self._passes.recovered()
            if not claimed:
                await asyncio.sleep(0)  # a store that returns at once must not starve the loop

    async def aclose(self) -> None:
        """Stop the loop: a wait for due schedules is cancelled; deliveries in flight finish first.

        A claim cancelled while the store was answering leaves what it claimed leased: delivered
        once its lease ends (by another replica, or this app when it starts again).
        """
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        if self._waiting:
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    async def __aenter__(self) -> Scheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"Scheduler({state}, delivered={self.delivered}, failed={self.failed}, dead={self.dead})"


# -- what the app builds and delivers ---------------------------------------------------------------


def new_schedule(
    mediator: Mediator,
    registry: TypeRegistry,
    max_payload: int,
    message: object,
    *,
    at: datetime | float | None,
    after: timedelta | float | None,
    every: timedelta | float | None,
    cron: str | None,
    id: str | None,
) -> Schedule:
    """The :class:`~catga.protocols.Schedule` ``App.schedule`` stores (see its docs).

    Raises:
        ConfigurationError: not a message, bad times, interval or cron expression.
        InvalidIdentifierError: an invalid ``id``.
        PayloadTooLargeError: the encoded message is over ``max_payload``.
    """
    if isinstance(message, Event):
        kind = EVENT
    elif isinstance(message, Request):
        kind = COMMAND
    else:
        raise ConfigurationError(f"schedule() takes a command, query or event, got {message!r}")
    now = time.time()
    if cron is not None:
        if every is not None:
            raise ConfigurationError("schedule() takes every= or cron=, not both")
        start = now if at is None and after is None else due_time(at, after, now)
        due = _cron.parse(cron).next_after(max(start - 1e-6, now))  # a start on the minute counts
        interval = 0.0
    else:
        interval = interval_seconds(every)
        alone = interval and at is None and after is None  # every= alone: due one interval from now
        due = now + interval if alone else due_time(at, after, now)
    sid = f"s{mediator.new_id()}" if id is None else validate_identifier(id, "schedule id")
    name, body = registry.encode(message)
    if len(body) > max_payload:
        raise PayloadTooLargeError(len(body), max_payload, destination=name)
    parent = current_context()
    mid = mediator.new_id()
    metadata = Metadata(
        message_id=mid,
        correlation_id=mid if parent is None else parent.correlation_id,
        causation_id=None if parent is None else parent.message_id,
        created_at=now,
    )
    return Schedule(
        id=sid, due_at=due, kind=kind, type_name=name, body=body,
        headers=metadata.to_headers(name), every=interval, cron=cron or "",
    )  # fmt: skip


def pipeline_delivery(mediator: Mediator, registry: TypeRegistry) -> Deliver:
    """A :data:`Deliver` that sends (requests) or publishes (events) through ``mediator``.

    Every type with a handler is registered in ``registry`` first, so that a process that did not
    schedule a message can decode it. A failed Result whose code is in :data:`RETRY_CODES` (or that
    is retryable) raises :class:`ScheduleDeliveryError`; another failure is logged at WARNING and
    the occurrence is done.
    """
    for message_type in mediator.message_types():
        if message_type not in registry:
            # another type with that name: decoding the schedule then says which
            with contextlib.suppress(ConfigurationError):
                registry.register(message_type)

    async def deliver(schedule: Schedule) -> None:
        try:
            message = registry.decode(schedule.type_name, schedule.body)
        except UnknownMessageTypeError as exc:
            raise ScheduleDeliveryError(
                f"{exc}; register the type (or a handler for it) in the app that delivers schedules"
            ) from exc
        _, metadata = Metadata.from_headers(schedule.headers)
        if recurring(schedule):
            metadata.message_id = occurrence_id(schedule)
            metadata.created_at = schedule.due_at
        if schedule.kind == COMMAND:
            result: Result[Any] = await mediator.send(message, None, metadata=metadata)
        else:
            result = await mediator.publish(message, None, metadata=metadata)
        if result.ok:
            return
        if result.code in RETRY_CODES or result.retryable:
            raise ScheduleDeliveryError(f"{result.code}: {result.error}")
        logger.warning(
            "scheduled %s %s (schedule %s) was delivered and refused: %s: %s",
            schedule.type_name, metadata.message_id, schedule.id, result.code, result.error,
        )  # fmt: skip

    return deliver
