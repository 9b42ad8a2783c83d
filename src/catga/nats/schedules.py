"""Schedules on NATS JetStream: message schedules (nats-server 2.12+), else delayed redelivery.

One stream (default ``CATGA_SCHEDULES``, subjects ``<prefix>.sched.>``, one message per subject)
holds each schedule's **occurrence** on ``<prefix>.sched.due.<id>``, read by one durable pull consumer
(default ``scheduler``) that every store object on the stream shares: JetStream hands each message to
one of them and redelivers it when it is not acknowledged within the consumer's ``ack_wait``, which
is this store's ``lease`` (set when the consumer is created: the ``lease`` argument of
:meth:`NatsScheduleStore.claim_due` is ignored). A message body is the
:class:`~catga.protocols.Schedule` plus the time before which it must not be delivered (msgpack).

How an occurrence waits for its due time, by ``mode``:

* ``"schedules"`` (the default on 2.12+): the stream has ``allow_msg_schedules``; a schedule due
  later is a message on ``<prefix>.sched.at.<id>`` with ``Nats-Schedule: @at <due time, RFC 3339,
  microseconds>`` and ``Nats-Schedule-Target: <prefix>.sched.due.<id>``. The server keeps the time:
  at the due time it writes the occurrence and removes the schedule message. nats-server 2.15 fires on
  a tick: we measured 0-250 ms of lateness. A schedule already due when it is added (or moved on) is
  written straight to its ``due`` subject.
* ``"delayed"`` (the default before 2.12, down to 2.10): the occurrence is written at once; the
  store ``NAK``-s it with a delay until its due time each time JetStream delivers it early. Exact to
  the server's redelivery timer; each schedule costs one early delivery (more after a server restart,
  which resets the timers to ``ack_wait``).

Either way a schedule is never returned before its due time by this process's clock. ``complete``
acknowledges the occurrence; for a recurring schedule it first writes the next one (``schedules``: on
the ``at`` subject, expecting it empty; ``delayed``: on the ``due`` subject, expecting the sequence of
the occurrence being completed), so a late or repeated completion writes nothing. ``retry`` rewrites
the occurrence (attempts + 1, the error, not before ``retry_at``) expecting its sequence, then
acknowledges the old one. ``cancel`` purges the ``due`` subject and, with ``schedules``, replaces the
schedule message by a tombstone (kept for a day: a completion that comes late cannot bring a recurring
schedule back).

``add`` with an id whose schedule message or occurrence exists returns False (checked, then written
with an expected last subject sequence, so two adds of one id cannot both win -- with ``schedules``,
unless one is due already and the other is not).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import time
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from catga._versions import Version, parse_version
from catga.errors import ConfigurationError
from catga.nats._base import NatsStoreBase, check_name
from catga.nats._errors import (
    ERR_MSG_DELETE_NOT_FOUND,
    ERR_NO_MESSAGE,
    ERR_WRONG_LAST_SEQUENCE,
    api_error,
    translate_errors,
)
from catga.nats.connection import LazyInit, NatsConnection, check_replicas, server_version
from catga.protocols import Schedule, validate_identifier

__all__ = ("SCHEDULES_SERVER", "NatsScheduleStore")

#: The oldest nats-server with JetStream message schedules (``allow_msg_schedules``).
SCHEDULES_SERVER: Version = (2, 12, 0)

_TOMBSTONE = "Catga-Schedule-Cancelled"
_GONE = (ERR_NO_MESSAGE, ERR_MSG_DELETE_NOT_FOUND, 10043)  # 10043: "sequence N not found"
_TOMBSTONE_TTL = "24h"


class _Entry(msgspec.Struct, array_like=True):
    """A message body: the schedule and the unix time before which it must not be delivered."""

    schedule: Schedule
    not_before: float


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_Entry).decode


def _rfc3339(t: float) -> str:
    """``t`` as RFC 3339 UTC with microseconds, rounded up (the server must not fire before ``t``)."""
    micros = -(-round(t * 1e7) // 10)  # ceil to whole microseconds, past float noise
    at = datetime.datetime.fromtimestamp(micros // 1_000_000, datetime.UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S") + f".{micros % 1_000_000:06d}Z"


class NatsScheduleStore(NatsStoreBase):
    """:class:`~catga.protocols.ScheduleStore` on JetStream (see the module docs).

    Args:
        source: a :class:`~catga.nats.NatsConnection` or a connected nats-py client.
        stream: the stream's name.
        prefix: the first subject token (``<prefix>.sched.>``).
        consumer: the durable consumer every store on the stream shares.
        lease: the consumer's ``ack_wait``: seconds a claimed occurrence is hidden from the others.
        mode: ``"schedules"`` (server message schedules, 2.12+), ``"delayed"`` (delayed redelivery,
            2.10+) or ``"auto"`` (default: ``schedules`` when the server has them). Every store on one
            stream must use the same mode.
        storage: ``"file"`` (default) or ``"memory"``.
        replicas: copies a JetStream cluster keeps (1-5).
        timeout: seconds per network call (default: the connection's).

    Attributes:
        mode: the mode in use, ``"schedules"`` or ``"delayed"`` (``"auto"`` until the first call
            settles it on the server's version).

    Raises:
        UnsupportedServerError: ``mode="schedules"`` and the server is older than 2.12.
        ConfigurationError: a bad name, lease, mode, storage or replicas value.
    """

    def __init__(
        self,
        source: NatsConnection | Client,
        *,
        stream: str = "CATGA_SCHEDULES",
        prefix: str = "catga",
        consumer: str = "scheduler",
        lease: float = 30.0,
        mode: str = "auto",
        storage: str = "file",
        replicas: int = 1,
        timeout: float | None = None,
    ) -> None:
        check_name(stream, "stream name")
        check_name(prefix, "subject prefix", dotted=True)
        check_name(consumer, "consumer name")
        check_replicas(replicas)
        if storage not in ("file", "memory"):
            raise ConfigurationError(f"storage must be 'file' or 'memory', got {storage!r}")
        if not lease > 0:
            raise ConfigurationError(f"lease must be > 0 seconds, got {lease!r}")
        if mode not in ("auto", "schedules", "delayed"):
            raise ConfigurationError(f"mode must be 'auto', 'schedules' or 'delayed', got {mode!r}")
        super().__init__(source, timeout=timeout)
        if mode == "schedules":
            self._conn.require(SCHEDULES_SERVER, "NatsScheduleStore(mode='schedules') (message schedules)")
        self.mode = mode
        self.stream = stream
        self.lease = lease
        self._storage = storage
        self._replicas = replicas
        self._prefix = prefix
        self._timer = mode == "schedules"
        self._at = f"{prefix}.sched.at."
        self._due = f"{prefix}.sched.due."
        self._consumer = consumer
        self._choose_mode(final=False)
        self._init = LazyInit(self._create)
        self._sub: Any = None
        self._inflight: dict[tuple[str, float], Msg] = {}

    def _choose_mode(self, *, final: bool = True) -> None:
        """Settle ``auto`` on the server's version; with ``final=False`` only if it is known already (a
        connection an app builds lazily knows it only once open)."""
        if self.mode == "auto":
            found = parse_version(server_version(self._conn.client) or "")
            if found is None and not final:
                return
            self.mode = "schedules" if found is None or found >= SCHEDULES_SERVER else "delayed"
            self._timer = self.mode == "schedules"

    async def _create(self) -> None:
        conn, t = self._conn, self._timeout
        self._choose_mode()
        stream_config = StreamConfig(
            name=self.stream,
            subjects=[f"{self._prefix}.sched.>"],
            storage=StorageType(self._storage),
            num_replicas=self._replicas,
            max_msgs_per_subject=1,
            allow_msg_schedules=True if self._timer else None,
            allow_msg_ttl=True if self._timer else None,
            allow_direct=True,
        )
        check = ("subjects", "allow_msg_schedules") if self._timer else ("subjects",)
        await conn.ensure_stream(stream_config, check, timeout=t)
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

    async def _write(self, subject: str, body: bytes, expected_seq: int, headers: dict[str, str]) -> bool:
        """Publish expecting ``subject``'s last sequence; False when it is another."""
        headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_seq)
        with translate_errors(f"write {subject!r}", self._timeout):
            try:
                await self._conn.js.publish(subject, body, timeout=self._timeout, headers=headers)
            except nats.js.errors.APIError as exc:
                if exc.err_code == ERR_WRONG_LAST_SEQUENCE:
                    return False
                raise
        return True

    async def _put(self, schedule: Schedule, not_before: float, expected_seq: int) -> bool:
        """Write an occurrence: on its ``due`` subject when it is due or the mode is ``delayed``, else a
        schedule message on its ``at`` subject (``expected_seq`` is then that subject's)."""
        body = _encode(_Entry(schedule, not_before))
        if not self._timer or not_before <= time.time():
            return await self._write(self._due + schedule.id, body, expected_seq, {})
        headers = {
            "Nats-Schedule": f"@at {_rfc3339(not_before)}",
            "Nats-Schedule-Target": self._due + schedule.id,
        }
        return await self._write(self._at + schedule.id, body, expected_seq, headers)

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
            at = await self._last(self._at + schedule.id) if self._timer else None
            if at is not None and not (at.headers or {}).get(_TOMBSTONE):
                return False
            due = await self._last(self._due + schedule.id)
            if due is not None:
                return False
            later = self._timer and fresh.due_at > time.time()
            expected = (0 if at is None else at.seq) if later else 0
            if await self._put(fresh, fresh.due_at, expected):
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
                    entry = _decode(msg.data)
                except msgspec.DecodeError:
                    await msg.term()  # not ours: never redelivered
                    continue
                schedule = entry.schedule
                early = max(entry.not_before, schedule.due_at) - now
                if early > 0:  # not before its due (or retry) time
                    await msg.nak(delay=early)
                    continue
                self._inflight[(schedule.id, schedule.due_at)] = msg
                out.append(schedule)
        return out

    async def complete(self, schedule: Schedule, next_due: float | None = None) -> None:
        """Acknowledge the occurrence (and write the next one of a recurring schedule)."""
        msg = self._inflight.pop((schedule.id, schedule.due_at), None)
        if msg is None:
            return  # not claimed here, or settled already
        await self._ready()
        seq = msg.metadata.sequence.stream
        if next_due is not None:
            nxt = msgspec.structs.replace(schedule, due_at=next_due, attempts=0, last_error=None)
            # fails when the schedule was cancelled or moved on already: nothing written
            await self._put(nxt, next_due, 0 if self._timer and next_due > time.time() else seq)
        with translate_errors(f"complete schedule {schedule.id!r}", self._timeout):
            await msg.ack()
            try:  # deleted: never redelivered, even if the ack was lost
                await self._conn.js.delete_msg(self.stream, seq)
            except nats.js.errors.APIError as exc:  # gone already (replaced, purged): fine
                if exc.code != 404 and exc.err_code not in _GONE:
                    raise

    async def retry(self, schedule: Schedule, retry_at: float, error: str) -> None:
        """Rewrite the occurrence with one more attempt, not before ``retry_at``; ack the old one."""
        msg = self._inflight.pop((schedule.id, schedule.due_at), None)
        if msg is None:
            return
        again = msgspec.structs.replace(schedule, attempts=schedule.attempts + 1, last_error=error)
        body = _encode(_Entry(again, max(retry_at, schedule.due_at)))
        # expecting the occurrence's own sequence: a cancelled (purged) one is not written again
        await self._write(self._due + schedule.id, body, msg.metadata.sequence.stream, {})
        with translate_errors(f"retry schedule {schedule.id!r}", self._timeout):
            await msg.ack()

    async def cancel(self, id: str) -> bool:
        """Purge the occurrence; with ``schedules``, replace the schedule message by a tombstone."""
        validate_identifier(id, "schedule id")
        await self._ready()
        cancelled = False
        subject = self._at + id
        for _ in range(8 if self._timer else 0):
            last = await self._last(subject)
            if last is not None and (last.headers or {}).get(_TOMBSTONE):
                break  # cancelled already
            if last is None and await self._last(self._due + id) is None:
                break  # nothing scheduled, nothing pending
            # the schedule message, or (it fired, the occurrence is pending) an empty subject: a
            # tombstone replaces it and fences the re-arm of a late completion
            headers = {_TOMBSTONE: "1", "Nats-TTL": _TOMBSTONE_TTL}
            if await self._write(subject, b"", 0 if last is None else last.seq, headers):
                cancelled = last is not None
                break
        purged = await self._purge(self._due + id)
        return cancelled or purged > 0

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
        """The schedule (its schedule message, or its occurrence), or None."""
        await self._ready()
        if self._timer:
            at = await self._last(self._at + id)
            if at is not None:
                return None if (at.headers or {}).get(_TOMBSTONE) else _decode(at.data).schedule
        due = await self._last(self._due + id)
        return None if due is None else _decode(due.data).schedule

    async def _close(self) -> None:
        sub, self._sub = self._sub, None
        self._inflight.clear()
        if sub is not None:
            try:
                async with asyncio.timeout(self._timeout):
                    await sub.unsubscribe()
            except (TimeoutError, nats.errors.Error):
                pass
