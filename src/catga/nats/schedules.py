"""Schedules on NATS JetStream message schedules (nats-server 2.12+): the server keeps the time.

One stream (default ``CATGA_SCHEDULES``, subjects ``<prefix>.sched.>``, ``allow_msg_schedules``,
one message per subject) holds, per schedule id:

* ``<prefix>.sched.at.<id>`` — the schedule message: ``Nats-Schedule: @at <due time, RFC 3339 with
  microseconds>`` and ``Nats-Schedule-Target: <prefix>.sched.due.<id>``; its body is the
  :class:`~catga.protocols.Schedule` (msgpack). At the due time the server copies the body to the
  target subject and removes the schedule message.
* ``<prefix>.sched.due.<id>`` — the occurrence that fell due, read by one durable pull consumer
  (default ``scheduler``) that every store object on the stream shares: JetStream hands each message
  to one of them and redelivers it when it is not acknowledged within the consumer's ``ack_wait``,
  which is this store's ``lease`` (set when the consumer is created: the ``lease`` argument of
  :meth:`NatsScheduleStore.claim_due` is ignored).

So: ``claim_due`` is a pull (waiting up to ``wait`` seconds, the server wakes it when something falls
due); ``complete`` acknowledges the occurrence and deletes it, and for a recurring schedule first
writes the next schedule message (expecting the ``at`` subject to be empty, so a late or repeated
completion writes nothing); ``retry`` is a ``NAK`` with a delay (``attempts`` is the delivery count
of the occurrence minus one: a lease that ran out counts too; ``last_error`` is not kept);
``cancel`` replaces the schedule message by a tombstone (kept for a day, so a completion that comes
late cannot bring the schedule back) and purges a pending occurrence. A schedule is never returned
before its due time: the server fires ``@at`` at or after it, and an occurrence that arrives early
by this process's clock is ``NAK``-ed until then.

``add`` with an id whose schedule message or pending occurrence exists returns False (checked, then
written with an expected-last-subject-sequence, so two adds of one id cannot both win — unless one is
due already and the other not: a schedule due when it is added is written straight to its ``due``
subject, skipping the server's timer, which fires on a tick: 0-250 ms late with nats-server 2.15).

Servers older than 2.12 have no message schedules: this store refuses them
(:class:`~catga.errors.UnsupportedServerError`); use the Redis or PostgreSQL store there.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import time
from typing import Any, ClassVar

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from catga._versions import Version
from catga.errors import ConfigurationError
from catga.nats._base import NatsStoreBase, check_name
from catga.nats._errors import (
    ERR_MSG_DELETE_NOT_FOUND,
    ERR_NO_MESSAGE,
    ERR_WRONG_LAST_SEQUENCE,
    api_error,
    translate_errors,
)
from catga.nats.connection import LazyInit, NatsConnection, check_replicas
from catga.protocols import Schedule, validate_identifier

__all__ = ("SCHEDULES_SERVER", "NatsScheduleStore")

#: The oldest nats-server with JetStream message schedules (``allow_msg_schedules``).
SCHEDULES_SERVER: Version = (2, 12, 0)

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Schedule).decode
_TOMBSTONE = "Catga-Schedule-Cancelled"
_GONE = (ERR_NO_MESSAGE, ERR_MSG_DELETE_NOT_FOUND, 10043)  # 10043: "sequence N not found"
_TOMBSTONE_TTL = "24h"


def _rfc3339(t: float) -> str:
    """``t`` as RFC 3339 UTC with microseconds, rounded up (the server must not fire before ``t``)."""
    micros = -(-round(t * 1e7) // 10)  # ceil to whole microseconds, past float noise
    at = datetime.datetime.fromtimestamp(micros // 1_000_000, datetime.UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S") + f".{micros % 1_000_000:06d}Z"


class NatsScheduleStore(NatsStoreBase):
    """:class:`~catga.protocols.ScheduleStore` on JetStream message schedules (see the module docs).

    Args:
        source: a :class:`~catga.nats.NatsConnection` or a connected nats-py client.
        stream: the stream's name.
        prefix: the first subject token (``<prefix>.sched.>``).
        consumer: the durable consumer every store on the stream shares.
        lease: the consumer's ``ack_wait``: seconds a claimed occurrence is hidden from the others.
        storage: ``"file"`` (default) or ``"memory"``.
        replicas: copies a JetStream cluster keeps (1-5).
        timeout: seconds per network call (default: the connection's).

    Raises:
        UnsupportedServerError: the server is older than 2.12.
        ConfigurationError: a bad name, lease, storage or replicas value.
    """

    _needs: ClassVar[tuple[Version, str]] = (SCHEDULES_SERVER, "JetStream message schedules")

    def __init__(
        self,
        source: NatsConnection | Client,
        *,
        stream: str = "CATGA_SCHEDULES",
        prefix: str = "catga",
        consumer: str = "scheduler",
        lease: float = 30.0,
        storage: str = "file",
        replicas: int = 1,
        timeout: float | None = None,
    ) -> None:
        super().__init__(source, timeout=timeout)
        check_name(stream, "stream name")
        check_name(prefix, "subject prefix", dotted=True)
        check_name(consumer, "consumer name")
        check_replicas(replicas)
        if storage not in ("file", "memory"):
            raise ConfigurationError(f"storage must be 'file' or 'memory', got {storage!r}")
        if not lease > 0:
            raise ConfigurationError(f"lease must be > 0 seconds, got {lease!r}")
        self.stream = stream
        self.lease = lease
        self._at = f"{prefix}.sched.at."
        self._due = f"{prefix}.sched.due."
        self._consumer = consumer
        self._config = StreamConfig(
            name=stream,
            subjects=[f"{prefix}.sched.>"],
            storage=StorageType(storage),
            num_replicas=replicas,
            max_msgs_per_subject=1,
            allow_msg_schedules=True,
            allow_msg_ttl=True,
            allow_direct=True,
        )
        self._init = LazyInit(self._create)
        self._sub: Any = None
        self._inflight: dict[tuple[str, float], Msg] = {}

    async def _create(self) -> None:
        conn, t = self._conn, self._timeout
        await conn.ensure_stream(self._config, ("subjects", "allow_msg_schedules"), timeout=t)
        with translate_errors(f"create consumer {self._consumer!r} on {self.stream!r}", t):
            js = conn.client.jetstream(prefix=conn.api_prefix, timeout=t)
            config = ConsumerConfig(
                durable_name=self._consumer,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.lease,
                max_deliver=-1,
                max_ack_pending=-1,
                filter_subject=f"{self._due}>",
            )
            # exists with another ack_wait: use it as it is
            with contextlib.suppress(nats.js.errors.BadRequestError):
                await js.add_consumer(self.stream, config)
            self._sub = await js.pull_subscribe_bind(self._consumer, self.stream)

    async def _ready(self) -> None:
        if not self._init.ready:
            await self._init()

    async def _last(self, subject: str) -> Any:
        """The last message on ``subject`` (``.seq``, ``.headers``, ``.data``), or None."""
        with translate_errors(f"read {subject!r}", self._timeout):
            try:
                return await self._conn.js.get_last_msg(self.stream, subject)
            except nats.js.errors.NotFoundError:
                return None
            except nats.js.errors.APIError as exc:
                if exc.err_code == ERR_NO_MESSAGE:
                    return None
                raise

    async def _arm(self, schedule: Schedule, expected_seq: int, *, due_now: bool = False) -> bool:
        """Write the schedule message (``due_now``: the occurrence itself, no server timer); False when
        the last sequence of the subject written is not ``expected_seq``."""
        if due_now:
            subject = self._due + schedule.id
            headers = {"Nats-Expected-Last-Subject-Sequence": str(expected_seq)}
        else:
            subject = self._at + schedule.id
            headers = {
                "Nats-Schedule": f"@at {_rfc3339(schedule.due_at)}",
                "Nats-Schedule-Target": self._due + schedule.id,
                "Nats-Expected-Last-Subject-Sequence": str(expected_seq),
            }
        with translate_errors(f"schedule {schedule.id!r}", self._timeout):
            try:
                await self._conn.js.publish(
                    subject, _encode(schedule), timeout=self._timeout, headers=headers
                )
            except nats.js.errors.APIError as exc:
                if exc.err_code == ERR_WRONG_LAST_SEQUENCE:
                    return False
                raise
        return True

    async def add(self, schedule: Schedule) -> bool:
        """Store ``schedule``; False (nothing changed) when its id is already scheduled.

        Raises:
            ConfigurationError: not a :class:`~catga.protocols.Schedule`.
            InvalidIdentifierError: an invalid id.
            BackendUnavailableError, BackendTimeoutError, BackendError: the server failed.
        """
        if not isinstance(schedule, Schedule):
            raise ConfigurationError(f"add() takes a Schedule, got {schedule!r}")
        validate_identifier(schedule.id, "schedule id")
        await self._ready()
        fresh = msgspec.structs.replace(schedule, attempts=0, last_error=None)
        for _ in range(8):
            last = await self._last(self._at + schedule.id)
            if last is not None and not (last.headers or {}).get(_TOMBSTONE):
                return False
            if await self._last(self._due + schedule.id) is not None:
                return False
            if fresh.due_at <= time.time():  # due already: skip the server's timer (up to 250 ms late)
                if await self._arm(fresh, 0, due_now=True):
                    return True
            elif await self._arm(fresh, 0 if last is None else last.seq):
                return True
        return False  # lost every race to other adds of this id: one of them won

    async def claim_due(self, limit: int = 100, lease: float = 30.0, wait: float = 0.0) -> list[Schedule]:
        """Pull up to ``limit`` occurrences that fell due; wait up to ``wait`` s when none has.

        ``lease`` is ignored: the consumer's ``ack_wait`` (this store's ``lease``) applies.
        """
        if limit <= 0:
            return []
        await self._ready()
        seconds = max(wait, 0.05)
        with translate_errors(f"claim due schedules of {self.stream!r}", seconds):
            try:
                msgs: list[Msg] = await self._sub.fetch(limit, timeout=seconds)
            except TimeoutError:  # nothing fell due within the wait (nats-py raises either kind)
                return []
        out: list[Schedule] = []
        now = time.time()
        for extra in msgs[limit:]:  # answers to an earlier, expired pull can arrive with this one
            await extra.nak()
        for msg in msgs[:limit]:
            try:
                schedule = _decode(msg.data)
            except msgspec.DecodeError:
                await msg.term()  # not ours: never redelivered
                continue
            if schedule.due_at > now:  # fired early by this clock: not before the due time
                await msg.nak(delay=schedule.due_at - now)
                continue
            schedule.attempts = max(0, msg.metadata.num_delivered - 1)
            self._inflight[(schedule.id, schedule.due_at)] = msg
            out.append(schedule)
        return out

    async def complete(self, schedule: Schedule, next_due: float | None = None) -> None:
        """Acknowledge the occurrence (and write the next one of a recurring schedule)."""
        msg = self._inflight.pop((schedule.id, schedule.due_at), None)
        if msg is None:
            return  # not claimed here, or settled already
        await self._ready()
        if next_due is not None:
            nxt = msgspec.structs.replace(schedule, due_at=next_due, attempts=0, last_error=None)
            await self._arm(nxt, 0)  # fails when the schedule was cancelled or moved on already
        with translate_errors(f"complete schedule {schedule.id!r}", self._timeout):
            await msg.ack()
            try:  # deleted: never redelivered, even if the ack was lost
                await self._conn.js.delete_msg(self.stream, msg.metadata.sequence.stream)
            except nats.js.errors.APIError as exc:  # gone already (purged by a cancel): fine
                if exc.code != 404 and exc.err_code not in _GONE:
                    raise

    async def retry(self, schedule: Schedule, retry_at: float, error: str) -> None:
        """``NAK`` the occurrence with a delay until ``retry_at`` (not before its due time)."""
        msg = self._inflight.pop((schedule.id, schedule.due_at), None)
        if msg is None:
            return
        delay = max(retry_at, schedule.due_at) - time.time()
        with translate_errors(f"retry schedule {schedule.id!r}", self._timeout):
            await msg.nak(delay=delay if delay > 0 else None)

    async def cancel(self, id: str) -> bool:
        """Replace the schedule message by a tombstone and purge a pending occurrence."""
        validate_identifier(id, "schedule id")
        await self._ready()
        subject = self._at + id
        cancelled = False
        for _ in range(8):
            last = await self._last(subject)
            if last is not None and (last.headers or {}).get(_TOMBSTONE):
                break  # cancelled already
            if last is None and await self._last(self._due + id) is None:
                break  # nothing scheduled, nothing pending
            # the schedule message, or (it fired, the occurrence is pending) an empty subject: a
            # tombstone replaces it and fences the re-arm of a late completion
            if await self._tombstone(subject, 0 if last is None else last.seq):
                cancelled = last is not None
                break
        purged = await self._purge(self._due + id)
        return cancelled or purged > 0

    async def _tombstone(self, subject: str, expected_seq: int) -> bool:
        headers = {
            _TOMBSTONE: "1",
            "Nats-TTL": _TOMBSTONE_TTL,
            "Nats-Expected-Last-Subject-Sequence": str(expected_seq),
        }
        with translate_errors(f"cancel {subject!r}", self._timeout):
            try:
                await self._conn.js.publish(subject, b"", timeout=self._timeout, headers=headers)
            except nats.js.errors.APIError as exc:
                if exc.err_code == ERR_WRONG_LAST_SEQUENCE:
                    return False  # it fired or changed meanwhile: look again
                raise
        return True

    async def _purge(self, subject: str) -> int:
        api = f"{self._conn.api_prefix}.STREAM.PURGE.{self.stream}"
        with translate_errors(f"purge {subject!r}", self._timeout):
            reply = await self._conn.client.request(
                api, json.dumps({"filter": subject}).encode(), timeout=self._timeout
            )
        body = json.loads(reply.data)
        if "error" in body:
            raise api_error(f"purge {subject!r}", body["error"])
        return int(body.get("purged", 0))

    async def get(self, id: str) -> Schedule | None:
        """The schedule (its message, or its occurrence that fell due), or None."""
        await self._ready()
        last = await self._last(self._at + id)
        if last is not None:
            return None if (last.headers or {}).get(_TOMBSTONE) else _decode(last.data)
        due = await self._last(self._due + id)
        return None if due is None else _decode(due.data)

    async def _close(self) -> None:
        sub, self._sub = self._sub, None
        self._inflight.clear()
        if sub is not None:
            try:
                async with asyncio.timeout(self._timeout):
                    await sub.unsubscribe()
            except (TimeoutError, nats.errors.Error):
                pass
