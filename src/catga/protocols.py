# Over 500 lines: every backend contract (the protocols and their record types) in one file, so a
# backend author reads one place; each protocol is small and mostly its documented contract.
"""The storage and transport contracts every backend implements.

Each protocol states precisely what is atomic, what a duplicate does and what a conflict raises. The
conformance suites in :mod:`catga.testing.contracts` check exactly these statements against every backend
that implements the protocol: ``catga.memory``, ``catga.nats`` and ``catga.redis`` (all of them), and
``catga.postgres`` (event store, idempotency and inbox stores, outbox, distributed lock), and
``catga.sqlite`` (event store).

Identifiers (stream ids, keys, destinations) are validated by :func:`validate_identifier`: 1–200
characters from ``[A-Za-z0-9_\\-:.@=+]`` ... see its docstring. Backends that map them to NATS subjects or
Redis keys must additionally make sure no id can address another stream's data.

Times are seconds (float). Every backend object supports ``async with`` and ``aclose()``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import msgspec

from catga.errors import InvalidIdentifierError
from catga.messages import Metadata, QoS

__all__ = (
    "ANY",
    "NO_STREAM",
    "Cache",
    "Claim",
    "ClaimStatus",
    "COMMAND",
    "EVENT",
    "PROJECTION",
    "DeadLetter",
    "DeadLetterQueue",
    "DistributedLock",
    "EventStore",
    "IdempotencyStore",
    "InboxStore",
    "Lease",
    "MessageHandler",
    "RawHandler",
    "OutboxMessage",
    "OutboxStatus",
    "OutboxStore",
    "Schedule",
    "ScheduleStore",
    "StoredEvent",
    "Subscription",
    "Transport",
    "validate_identifier",
)

T = TypeVar("T")

#: Expected version: append whatever the stream's current version is.
ANY = -2
#: Expected version: the stream must not exist yet (no event in it). Same as exact version -1.
NO_STREAM = -1

MAX_IDENTIFIER_LENGTH = 200
_IDENT = re.compile(r"[A-Za-z0-9_\-:@=+]+(?:\.[A-Za-z0-9_\-:@=+]+)*\Z")


def validate_identifier(value: object, kind: str = "stream id") -> str:
    """Check an id/key is safe to map onto subjects and keys; return it.

    Rules: a ``str`` of 1–200 characters, ASCII letters, digits and ``_ - : @ = +``, with ``.`` allowed
    only between other characters (no leading, trailing or doubled dots). Whitespace, ``*``, ``>``,
    ``/``, ``{``, ``}``, non-ASCII and control characters are rejected.

    Raises:
        InvalidIdentifierError: the value breaks a rule; the message says which.
    """
    if not isinstance(value, str):
        raise InvalidIdentifierError(kind, value, f"must be a str, got {type(value).__name__}")
    if not value:
        raise InvalidIdentifierError(kind, value, "must not be empty")
    if len(value) > MAX_IDENTIFIER_LENGTH:
        raise InvalidIdentifierError(
            kind, value[:40] + "...", f"longer than {MAX_IDENTIFIER_LENGTH} characters"
        )
    if _IDENT.match(value) is None:
        raise InvalidIdentifierError(
            kind,
            value,
            "use ASCII letters, digits and _ - : @ = + (dots only between other characters)",
        )
    return value


# --------------------------------------------------------------------------------------------------
# Event store


class StoredEvent(msgspec.Struct, frozen=True, gc=False):
    """An event as stored.

    Attributes:
        stream_id: the stream it belongs to.
        version: its 0-based, contiguous version within the stream.
        position: its global position: strictly increasing across all streams in append order,
            starting at 1, gaps allowed.
        type_name: the event's wire type name.
        data: the event object (decoded through the store's registry).
        timestamp: unix time (seconds) of the append; all events of one append share it.
        metadata: string metadata (message id, correlation and causation ids...).
    """

    stream_id: str
    version: int
    position: int
    type_name: str
    data: Any
    timestamp: float
    metadata: Mapping[str, str] = msgspec.field(default_factory=dict)


class EventStore(Protocol):
    """An append-only store of event streams with optimistic concurrency.

    Contract:
        * ``append`` is atomic: all events are stored or none is.
        * ``expected_version``: :data:`ANY` appends unconditionally and never raises
          :class:`~catga.errors.ConcurrencyError`, however many writers race; :data:`NO_STREAM` (== -1)
          requires an empty stream; an int ``n >= 0`` requires the stream's version to be exactly ``n``.
          A mismatch raises :class:`~catga.errors.ConcurrencyError` with ``stream_id``,
          ``expected_version`` and ``actual_version``, and stores nothing; it means the stream really is
          at another version. The check is done atomically with the write (never read-then-write from
          the client).
        * Versions are 0-based and contiguous per stream; an append returns the new stream version (the
          version of its last event). Appending an empty list stores nothing and returns the current
          version (still checking ``expected_version``).
        * Positions are global, strictly increasing in commit order, starting at 1.
        * Invalid stream ids raise :class:`~catga.errors.InvalidIdentifierError` before any I/O.
        * Events must be of a type the store can encode (registered in its registry for remote backends).
    """

    async def append(
        self,
        stream_id: str,
        events: Sequence[object],
        expected_version: int = ANY,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Append ``events`` to ``stream_id``; return the new version. ``metadata`` applies to each."""
        ...

    async def read(
        self, stream_id: str, from_version: int = 0, max_count: int | None = None
    ) -> list[StoredEvent]:
        """Events of one stream with ``version >= from_version``, oldest first, at most ``max_count``.

        An unknown stream reads as an empty list.
        """
        ...

    async def version(self, stream_id: str) -> int:
        """The stream's current version (the last event's version), -1 when empty."""
        ...

    async def read_all(self, from_position: int = 1, max_count: int | None = None) -> list[StoredEvent]:
        """Events of all streams with ``position >= from_position``, in position order."""
        ...

    def subscribe_all(self, from_position: int = 1) -> AsyncIterator[StoredEvent]:
        """Catch up from ``from_position``, then yield new events live, in position order, forever.

        Close the iterator (``aclose()``) or cancel the consuming task to stop.
        """
        ...

    async def aclose(self) -> None:
        """Release connections and tasks. Idempotent."""
        ...


# --------------------------------------------------------------------------------------------------
# Outbox


class OutboxStatus(enum.IntEnum):
    """Lifecycle of an outbox message."""

    PENDING = 0
    PUBLISHED = 1
    DEAD = 2


class OutboxMessage(msgspec.Struct, kw_only=True):
    """A message waiting in the outbox.

    Attributes:
        id: unique id (the message id as a string); adding a duplicate id is ignored.
        destination: subject/topic to publish to.
        type_name: wire type name of the body.
        body: encoded message.
        headers: wire headers (metadata).
        created_at: unix seconds.
        attempts: failed publish attempts so far.
        next_attempt_at: unix seconds before which the relay must not retry it.
        last_error: the last publish error.
        status: lifecycle state.
    """

    id: str
    destination: str
    type_name: str
    body: bytes
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    created_at: float = 0.0
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    status: OutboxStatus = OutboxStatus.PENDING


class OutboxStore(Protocol):
    """Durable store of messages to publish, written with the state change they belong to.

    Contract:
        * ``add`` stores all messages atomically; a message whose id is already stored is ignored
          (the first one wins), so adding is idempotent.
        * ``fetch_pending(limit, lease)`` returns up to ``limit`` PENDING messages whose
          ``next_attempt_at <= now``, oldest first, and leases them for ``lease`` seconds: a concurrent
          ``fetch_pending`` does not return a leased message until the lease expires (a relay that died
          mid-publish leaves them to another relay; nothing is lost).
        * ``mark_published`` sets PUBLISHED (idempotent; unknown ids ignored).
        * ``mark_failed(id, error, retry_at)`` increments ``attempts``, records ``last_error`` and sets
          ``next_attempt_at = retry_at``; with ``retry_at=None`` the message becomes DEAD. Either way the
          message's lease ends (a retry is due at ``retry_at``, not at the end of the lease).
        * ``get`` returns a message whatever its state, or None; ``count(status)`` counts by state.
        * ``purge_published(older_than)`` deletes PUBLISHED messages created before that unix time and
          returns how many.
    """

    async def add(self, messages: Sequence[OutboxMessage]) -> None: ...
    async def fetch_pending(self, limit: int = 100, lease: float = 30.0) -> list[OutboxMessage]: ...
    async def mark_published(self, ids: Sequence[str]) -> None: ...
    async def mark_failed(self, id: str, error: str, retry_at: float | None) -> None: ...
    async def get(self, id: str) -> OutboxMessage | None: ...
    async def count(self, status: OutboxStatus = OutboxStatus.PENDING) -> int: ...
    async def purge_published(self, older_than: float) -> int: ...
    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------------------------------
# Idempotency and inbox


class ClaimStatus(enum.IntEnum):
    """Outcome of :meth:`IdempotencyStore.claim`."""

    CLAIMED = 0  #: the caller owns the key now and must complete() or release() it
    IN_PROGRESS = 1  #: someone else holds an unexpired claim
    COMPLETED = 2  #: already done; ``Claim.result`` holds the stored result


class Claim(msgspec.Struct, frozen=True, gc=False):
    """What :meth:`IdempotencyStore.claim` found. ``result`` is set when ``status`` is COMPLETED."""

    status: ClaimStatus
    result: bytes | None = None


class IdempotencyStore(Protocol):
    """Records that a key (a message id) was processed, with its result.

    Contract:
        * ``claim(key, lock_ttl)`` is one atomic step: if the key is free (never claimed, released, or
          its claim expired after ``lock_ttl`` seconds) the caller gets CLAIMED; if another holder's claim
          is live, IN_PROGRESS; if completed, COMPLETED with the stored result. Of N concurrent claims
          of a free key exactly one gets CLAIMED.
        * ``complete(key, result, ttl)`` stores the result; it is returned by claims for ``ttl`` seconds,
          after which the key is forgotten (free again).
        * ``release(key)`` drops an unfinished claim so the message can be retried at once; it never
          removes a completed record.
        * Keys are strings validated with :func:`validate_identifier` (kind ``"idempotency key"``); the
          mediator uses the message id's decimal string.
    """

    async def claim(self, key: str, lock_ttl: float = 30.0) -> Claim: ...
    async def complete(self, key: str, result: bytes = b"", ttl: float = 86400.0) -> None: ...
    async def release(self, key: str) -> None: ...
    async def aclose(self) -> None: ...


class InboxStore(IdempotencyStore, Protocol):
    """Consumer-side idempotency keyed by message id: same contract as :class:`IdempotencyStore`.

    A consumer claims the message id before handling, completes it after, and releases it on failure so
    the redelivery is processed; a duplicate delivery of a completed message is acked without running
    the handler again.
    """


# --------------------------------------------------------------------------------------------------
# Dead letters


class DeadLetter(msgspec.Struct, kw_only=True):
    """A message that could not be processed.

    The record has the same form on every backend, and carries what a replay needs
    (:meth:`Transport.replay`): where the message goes (``source``, as the application names it, never a
    backend's subject or key), how it travels (``kind``), its body and headers untouched, and its id.

    Attributes:
        id: unique id of the dead letter (the message id when known).
        source: the logical destination it failed on (a transport's letters), or where it was going (an
            outbox's letters): ``OrderPlaced``, not ``catga.evt.OrderPlaced`` or ``P:t:evt:OrderPlaced``.
        type_name: wire type name, or "" when unknown (undecodable).
        body: the raw bytes, untouched.
        headers: wire headers (the catga ``Catga-*`` ones and the user's; never a broker's own, such
            as ``Nats-Msg-Id``).
        error: why it failed.
        attempts: deliveries or publish attempts made.
        failed_at: unix seconds.
        kind: ``"event"`` (published: every group gets a copy) or ``"command"`` (sent: one worker
            takes it); ``""`` in older records (replayed as events); ``"projection"`` for an event a
            projection parked (``source`` is the projection's name; not replayable).
        message_id: the message's catga id (its ``Catga-Id`` header), ``""`` when it had none.
    """

    id: str
    source: str
    type_name: str
    body: bytes
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    error: str = ""
    attempts: int = 0
    failed_at: float = 0.0
    kind: str = ""
    message_id: str = ""


#: :attr:`DeadLetter.kind` of an event (``publish``).
EVENT = "event"
#: :attr:`DeadLetter.kind` of a command (``send``).
COMMAND = "command"
#: :attr:`DeadLetter.kind` of an event a projection parked (:class:`~catga.eventsourcing.ErrorPolicy`):
#: never replayed through a transport -- fix the projection, then rebuild it or apply the event yourself.
PROJECTION = "projection"


class DeadLetterQueue(Protocol):
    """Where failed messages go, to be inspected and replayed.

    Contract: ``add`` stores a letter (a duplicate id replaces it); ``list`` returns up to ``limit``
    letters, oldest first; ``get``/``delete`` by id (``delete`` returns whether it existed); ``count``.
    Nothing is lost: bodies are stored as given.

    ``delete(id, expected=letter)`` deletes only while the stored letter still equals ``letter`` (the
    one read before), atomically: a replayed message that failed again and was dead-lettered anew under
    the same id, between the read and the delete, is kept. It returns False then, as for a missing id.
    """

    async def add(self, letter: DeadLetter) -> None: ...
    async def list(self, limit: int = 100) -> list[DeadLetter]: ...
    async def get(self, id: str) -> DeadLetter | None: ...
    async def delete(self, id: str, *, expected: DeadLetter | None = None) -> bool: ...
    async def count(self) -> int: ...
    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------------------------------
# Lock


class Lease(Protocol):
    """A held lock.

    Attributes:
        key: the lock key.
        token: random token identifying this holder (checked atomically on release/extend).
        fencing_token: strictly increasing per key across all acquisitions; pass it to downstream
            writes so they can reject a stale holder.
        lost: True once an automatic renewal (``auto_renew=True``) found the key expired or held by
            another holder; the renewal then stops (and logs a WARNING).
    """

    key: str
    token: str
    fencing_token: int
    lost: bool

    async def release(self) -> None:
        """Release; raises :class:`~catga.errors.LockNotOwnedError` if no longer the holder."""
        ...

    async def extend(self, ttl: float) -> None:
        """Reset the lock's ttl; raises :class:`~catga.errors.LockNotOwnedError` if not the holder."""
        ...

    async def __aenter__(self) -> Lease: ...
    async def __aexit__(self, *exc: object) -> None: ...


class DistributedLock(Protocol):
    """Mutual exclusion across processes.

    Contract:
        * ``acquire(key, ttl, wait)`` returns a :class:`Lease` once the key is free, retrying for up to
          ``wait`` seconds (0 = try once), else raises :class:`~catga.errors.LockNotAcquiredError`.
        * At most one live lease per key; a lease expires after ``ttl`` seconds unless extended.
        * Only the holder's token can release/extend (checked atomically on the server).
        * ``fencing_token`` strictly increases per key with every successful acquisition.
        * ``auto_renew=True`` extends the lease every ``ttl/3`` seconds until released.
        * Leases are per holder object, never per thread or task: one task cannot release another's.
    """

    async def acquire(
        self, key: str, *, ttl: float = 30.0, wait: float = 0.0, auto_renew: bool = False
    ) -> Lease: ...
    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------------------------------
# Cache


class Cache(Protocol):
    """Key → bytes with optional TTL.

    Contract: ``get`` returns None for a missing or expired key; ``set`` overwrites; ``delete`` returns
    whether the key existed; ``get_or_set`` calls ``factory`` only on a miss and stores its value;
    concurrent misses of one key on one cache object share one ``factory`` call (a failing factory
    stores nothing and fails every caller waiting on it); a bad ttl is refused before ``factory`` runs.
    """

    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...
    async def delete(self, key: str) -> bool: ...
    async def get_or_set(
        self, key: str, factory: Callable[[], Awaitable[bytes]], ttl: float | None = None
    ) -> bytes: ...
    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------------------------------
# Transport

#: A subscriber: receives the decoded message and its metadata. Raising means failure (nack/retry).
MessageHandler = Callable[[Any, Metadata], Awaitable[None]]

#: A request handler of :meth:`Transport.serve`: ``(request body, headers) -> (reply body, headers)``.
#: Raising answers the caller with an empty body and a ``Catga-Error`` header
#: (:data:`~catga.messages.H_ERROR`).
RawHandler = Callable[[bytes, dict[str, str]], Awaitable[tuple[bytes, dict[str, str]]]]


class Subscription(Protocol):
    """A live subscription; ``aclose()`` stops it after in-flight handlers finish."""

    async def aclose(self) -> None: ...


@runtime_checkable
class Transport(Protocol):
    """Moves messages between processes.

    Contract:
        * ``publish(message)`` fans an event out: every subscription group gets one copy (subscriptions
          with ``group=None`` each get their own copy).
        * ``send(message, destination)`` delivers to one consumer among those subscribed to the
          destination (competing consumers).
        * ``subscribe(message_type, handler, qos=..., group=..., destination=...)``: the destination
          defaults to the message type's wire name. Only ``message_type`` is decoded from it.
        * QoS ``AT_MOST_ONCE``: fire and forget; a failing handler loses the message (logged).
          ``AT_LEAST_ONCE``: ack after the handler returns; on exception nack and redeliver after a
          backoff; after ``max_deliver`` deliveries the message goes to the dead-letter queue with its
          error. ``EXACTLY_ONCE``: at-least-once plus an inbox check on the message id.
        * A message that cannot be decoded goes straight to the dead-letter queue with the reason.
        * At most ``max_in_flight`` handlers run at once per subscription (back-pressure).
        * ``request(destination, body, *, headers=None, timeout=5.0) -> (reply body, reply headers)``
          sends pre-encoded bytes to one server of ``destination`` (see ``serve(destination, handler,
          group="rpc")``) and waits for its reply; :mod:`catga.rpc` encodes and decodes on top. No
          reply in time raises :class:`~catga.errors.OperationTimeoutError`.
    """

    async def publish(
        self, message: object, *, metadata: Metadata | None = None, destination: str | None = None
    ) -> None: ...

    async def publish_batch(self, messages: Sequence[object], *, destination: str | None = None) -> None: ...

    async def send(
        self, message: object, *, metadata: Metadata | None = None, destination: str | None = None
    ) -> None: ...

    async def subscribe(
        self,
        message_type: type[T],
        handler: Callable[[T, Metadata], Awaitable[None]],
        *,
        qos: QoS = QoS.AT_LEAST_ONCE,
        group: str | None = None,
        destination: str | None = None,
        max_in_flight: int = 64,
        max_deliver: int = 5,
    ) -> Subscription: ...

    async def publish_raw(self, destination: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Publish pre-encoded bytes with wire headers to a destination's event subject/stream.

        For bridges, the outbox relay and tests (an undecodable body must reach the dead-letter queue,
        not crash the consumer). Not for dead letters: see :meth:`replay`.
        """
        ...

    async def replay(self, letter: DeadLetter) -> None:
        """Deliver a dead letter again: its body and headers, to its ``source``, as its ``kind``.

        An event is published (every group gets a copy), a command is sent (one worker takes it). The
        message keeps its id (``Catga-Id``), so an exactly-once consumer that handled it already skips
        it; the broker's own de-duplication id (NATS ``Nats-Msg-Id``) is fresh
        (``<message id>:replay:<random>``), so the broker never drops the replay as a duplicate of the
        original. Returns once the broker has stored the message (NATS: a JetStream ack not marked
        duplicate; Redis: ``XADD``'s entry id; memory: handed to at least one subscription).

        Raises:
            InvalidIdentifierError: the letter's ``source`` is not a valid destination.
            BackendError: the broker did not store it (NATS: also when it reports a duplicate).
            BackendUnavailableError / BackendTimeoutError: the broker is down or did not answer.
        """
        ...

    async def request(
        self,
        destination: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> tuple[bytes, dict[str, str]]: ...

    async def serve(
        self,
        destination: str,
        handler: RawHandler,
        *,
        group: str | None = "rpc",
    ) -> Subscription: ...

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------------------------------
# Scheduled messages


class Schedule(msgspec.Struct, kw_only=True):
    """A message to deliver at a time (see :mod:`catga.scheduling`).

    Attributes:
        id: the schedule's id (validated by :func:`validate_identifier`); adding a duplicate id is
            ignored.
        due_at: unix seconds: the current occurrence is delivered at this time, never before.
        kind: :data:`COMMAND` (sent: ``app.send``) or :data:`EVENT` (published: ``app.publish``).
        type_name: wire type name of the body.
        body: encoded message.
        headers: wire headers (the message's metadata, ``Catga-*`` and the user's).
        every: seconds between occurrences of a recurring schedule; 0 for a one-shot schedule.
        cron: a cron expression (UTC) of a recurring schedule, ``""`` for none (see
            :mod:`catga.scheduling`).
        attempts: failed deliveries of the current occurrence.
        last_error: the last delivery error of the current occurrence.
    """

    id: str
    due_at: float
    kind: str
    type_name: str
    body: bytes
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    every: float = 0.0
    attempts: int = 0
    last_error: str | None = None
    cron: str = ""


class ScheduleStore(Protocol):
    """Durable schedules, claimed by due time with a lease: what a :class:`~catga.scheduling.Scheduler`
    delivers from.

    An *occurrence* is a schedule's ``(id, due_at)``: one-shot schedules have one, recurring ones
    (``every > 0``) a new one each time :meth:`complete` moves ``due_at`` on.

    Contract:
        * ``add(schedule)`` stores it and returns True; a schedule whose id is already stored is
          ignored (the first one wins) and False returned, so scheduling with a chosen id is
          idempotent.
        * ``claim_due(limit, lease, wait)`` returns up to ``limit`` schedules whose ``due_at`` has
          come (by the store's clock; NATS: the server's), earliest first, and leases them for
          ``lease`` seconds: until the lease ends no other ``claim_due`` — of this object or another
          on the same backend — returns them; after it ends (a dispatcher that died) they are claimed
          again with the same ``due_at``. A schedule is **never** returned before its ``due_at``.
          When nothing is due, the call may wait up to ``wait`` seconds for something to fall due
          (``wait=0``: it returns at once); it may also return early with nothing.
        * ``complete(schedule, next_due)``: the occurrence ``schedule`` names was delivered. With
          ``next_due=None`` the schedule is deleted; else its ``due_at`` becomes ``next_due``, its
          attempts 0 and its lease ends. If the stored occurrence is another (it was completed already,
          by a dispatcher whose lease ran out) or the schedule is gone (cancelled), nothing changes.
        * ``retry(schedule, retry_at, error)``: the occurrence failed; ``attempts`` + 1, ``last_error``
          recorded, and it is not claimed again before the unix time ``retry_at``. Same no-op rule.
        * ``cancel(id)`` deletes the schedule and returns True; False when there is none (never
          scheduled, delivered, or cancelled already). An occurrence claimed before the cancel may
          still be delivered once.
        * ``get(id)`` returns the schedule as stored (its current occurrence), or None.
    """

    async def add(self, schedule: Schedule) -> bool: ...
    async def claim_due(self, limit: int = 100, lease: float = 30.0, wait: float = 0.0) -> list[Schedule]: ...
    async def complete(self, schedule: Schedule, next_due: float | None = None) -> None: ...
    async def retry(self, schedule: Schedule, retry_at: float, error: str) -> None: ...
    async def cancel(self, id: str) -> bool: ...
    async def get(self, id: str) -> Schedule | None: ...
    async def aclose(self) -> None: ...
