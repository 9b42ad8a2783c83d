"""eventsourcing's recorders on a catga :class:`~catga.protocols.EventStore`.

**Mapping.** An eventsourcing ``StoredEvent`` (``originator_id``, ``originator_version``, ``topic``,
``state``) is stored as one catga event of type ``eventsourcing.StoredEvent`` (:class:`Record`: the
version, topic, state bytes and whether the id is a UUID) in the stream
``<namespace><purpose>.<originator_id>`` (the factory's namespace is ``<application name>.``; purpose
``events`` for the application, ``snapshots`` for snapshots). A notification id is the event's
catga global position.

**Conflicts.** Within one aggregate, originator versions must grow: an insert whose first version is not
above the aggregate's last recorded one (a duplicate, or an older version) raises eventsourcing's
``IntegrityError`` and stores nothing. The check and the append are one optimistic step (the append
expects the catga version just read), so two writers racing on one aggregate cannot both succeed.
Events of *one* aggregate in one call are stored atomically. An insert spanning several aggregates is
checked for conflicts up front; on PostgreSQL it is then one transaction (a
:class:`~catga.postgres.PostgresUnitOfWork` on the store's pool), elsewhere it is stored aggregate by
aggregate, so a failure part way (a lost server, an event over the payload limit, a writer racing on a
later aggregate) can leave the earlier aggregates stored.

**Threads.** The recorders are synchronous and thread-safe: every call runs on the factory's event-loop
thread (see :mod:`catga.es_persistence._loop` for the one caller that is refused).
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import CancelledError, Future
from contextlib import AbstractAsyncContextManager
from itertools import pairwise
from typing import Any, TypeVar
from uuid import UUID

import msgspec
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    DataError,
    IntegrityError,
    Notification,
    OperationalError,
    PersistenceError,
    StoredEvent,
    Subscription,
    Tracking,
)

from catga.errors import (
    BackendError,
    CatgaError,
    ConcurrencyError,
    InvalidIdentifierError,
    PayloadTooLargeError,
    SerializationError,
)
from catga.es_persistence._loop import LoopThread
from catga.protocols import EventStore, validate_identifier
from catga.raw import last_position
from catga.serialization import TypeRegistry

__all__ = (
    "RECORD_TYPE",
    "CatgaAggregateRecorder",
    "CatgaApplicationRecorder",
    "CatgaSubscription",
    "Record",
    "record_registry",
)

T = TypeVar("T")

#: The catga type name of an eventsourcing stored event.
RECORD_TYPE = "eventsourcing.StoredEvent"
_PAGE = 500
_PROBE_FROM = 16  # select_events(gt=...) from this version on looks for where to start reading
_TRACKING = "tracking."  # the stream-id prefix of tracking records
_MAX_RACES = 100  # appends lost to other writers of the same aggregate before giving up


class Record(msgspec.Struct, frozen=True, array_like=True):
    """An eventsourcing stored event as catga stores it (its stream id holds the originator id).

    Attributes:
        originator_version: the aggregate version.
        topic: the domain event's topic.
        state: the serialised domain event, untouched.
        uuid: the originator id is a ``UUID`` (else a ``str``).
    """

    originator_version: int
    topic: str
    state: bytes
    uuid: bool


class _Registry(TypeRegistry):
    """Encodes :class:`Record`; decodes other type names to None, so foreign events are skipped."""

    def decode(self, name: str, data: bytes | bytearray | memoryview) -> Any:
        if name != RECORD_TYPE:
            return None
        return super().decode(name, data)

    def __contains__(self, item: object) -> bool:
        return True


def record_registry() -> TypeRegistry:
    """The registry to open a catga store with for these recorders (msgpack, :class:`Record` only)."""
    registry = _Registry("msgpack")
    registry.register(Record, RECORD_TYPE)
    return registry


def _transaction(store: EventStore) -> Callable[[], AbstractAsyncContextManager[Any]] | None:
    """A transaction that the store's appends to several streams join, when it has one (PostgreSQL)."""
    try:
        from catga.postgres import PostgresEventStore, PostgresUnitOfWork
    except ImportError:  # asyncpg is not installed: not a PostgreSQL store either
        return None
    if not isinstance(store, PostgresEventStore):
        return None
    return PostgresUnitOfWork(store.pool, timeout=store.timeout)


def _translated(exc: CatgaError) -> PersistenceError:
    """eventsourcing's error for a catga one (the catga error stays as ``__cause__``)."""
    if isinstance(exc, ConcurrencyError):
        return IntegrityError(str(exc))
    if isinstance(exc, InvalidIdentifierError | SerializationError | PayloadTooLargeError):
        return DataError(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, BackendError):
        return OperationalError(f"{type(exc).__name__}: {exc}")
    return PersistenceError(f"{type(exc).__name__}: {exc}")


class CatgaAggregateRecorder(AggregateRecorder):
    """eventsourcing's ``AggregateRecorder`` on a catga event store (see the module docs).

    Args:
        store: an open catga event store, opened with :func:`record_registry` on ``loop``.
        loop: the event-loop thread the store lives on.
        purpose: what the streams hold (``events``, ``snapshots``...), an identifier.
        namespace: prefixed to every stream id (the factory gives ``<application name>.``), so
            applications sharing one store keep apart.
        timeout: seconds one recorder call may take in all (``CATGA_CALL_TIMEOUT``).
    """

    def __init__(
        self,
        store: EventStore,
        loop: LoopThread,
        *,
        purpose: str = "events",
        namespace: str = "",
        timeout: float = 30.0,
    ):
        self._store = store
        self._loop = loop
        self._prefix = validate_identifier(namespace + purpose, "purpose") + "."
        self._tracking_prefix = namespace + _TRACKING
        self._timeout = timeout
        self._transaction = _transaction(store)

    # -- bridge ------------------------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T], what: str) -> T:
        try:
            return self._loop.run(coro, self._timeout, what)
        except PersistenceError:
            raise
        except CatgaError as exc:
            raise _translated(exc) from exc

    def _stream(self, originator_id: UUID | str) -> str:
        return self._prefix + str(originator_id)

    # -- writes ------------------------------------------------------------------------------------

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """Store ``stored_events`` (see the module docs for what is atomic); return None.

        Raises:
            IntegrityError: an event's version is not above its aggregate's last one (nothing of that
                aggregate is stored).
            DataError: an originator id is not a valid catga stream id, or an event is too large.
            OperationalError: the store failed or timed out.
        """
        self._call(self._insert(stored_events, positions=False), "insert_events")
        return None

    async def _insert(
        self, stored_events: Sequence[StoredEvent], *, positions: bool, tracking: Tracking | None = None
    ) -> list[int]:
        if self._transaction is None:
            return await self._write(stored_events, positions, tracking)
        async with self._transaction():  # PostgreSQL: every aggregate (and the tracking) or none
            return await self._write(stored_events, positions, tracking)

    async def _write(
        self, stored_events: Sequence[StoredEvent], positions: bool, tracking: Tracking | None
    ) -> list[int]:
        groups: dict[str, list[StoredEvent]] = {}
        for event in stored_events:
            groups.setdefault(self._stream(event.originator_id), []).append(event)
        if tracking is not None:
            record = StoredEvent(tracking.application_name, tracking.notification_id, "tracking", b"")
            groups.setdefault(self._tracking_prefix + tracking.application_name, []).append(record)
        for stream_id, events in groups.items():
            validate_identifier(stream_id)
            versions = [e.originator_version for e in events]
            if any(b <= a for a, b in pairwise(versions)):
                raise IntegrityError(
                    f"the versions {versions} of {stream_id!r} in one insert do not increase: "
                    "each version of an aggregate is recorded once"
                )
        # Conflicts anywhere are found before anything is stored (see the module docs).
        currents = {s: await self._check(s, events[0].originator_version) for s, events in groups.items()}
        found: dict[str, Iterator[int]] = {}
        for stream_id, events in groups.items():
            found[stream_id] = iter(await self._append(stream_id, events, currents[stream_id], positions))
        if not positions:
            return []
        return [next(found[self._stream(e.originator_id)]) for e in stored_events]

    async def _check(self, stream_id: str, first_version: int) -> int:
        """The stream's catga version after checking ``first_version`` is above its last event's."""
        current = await self._store.version(stream_id)
        if current >= 0:
            last = await self._store.read(stream_id, current, 1)
            if last and isinstance(last[0].data, Record) and first_version <= last[0].data.originator_version:
                raise IntegrityError(
                    f"aggregate {stream_id!r} already has version {last[0].data.originator_version}; "
                    f"cannot record version {first_version} (a version is recorded once, in order)"
                )
        return current

    async def _append(
        self, stream_id: str, events: list[StoredEvent], current: int, positions: bool
    ) -> list[int]:
        records = [
            Record(e.originator_version, e.topic, bytes(e.state), isinstance(e.originator_id, UUID))
            for e in events
        ]
        for _ in range(_MAX_RACES):
            try:
                await self._store.append(stream_id, records, current)
            except ConcurrencyError:  # another writer appended: re-check against what it wrote
                current = await self._check(stream_id, events[0].originator_version)
                continue
            if not positions:
                return []
            return [s.position for s in await self._store.read(stream_id, current + 1, len(records))]
        raise IntegrityError(f"{_MAX_RACES} writers in a row appended to {stream_id!r} before this insert")

    # -- reads -------------------------------------------------------------------------------------

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        """The aggregate's events with ``gt < version <= lte``, ascending (or ``desc``), at most ``limit``."""
        return self._call(self._select(originator_id, gt, lte, desc, limit), "select_events")

    async def _select(
        self, originator_id: UUID | str, gt: int | None, lte: int | None, desc: bool, limit: int | None
    ) -> list[StoredEvent]:
        stream_id = self._stream(originator_id)
        validate_identifier(stream_id)
        start = 0
        if desc and limit is not None and lte is None:  # the newest few (the last snapshot): read the tail
            start = max(0, await self._store.version(stream_id) - limit + 1)
        elif gt is not None and gt >= _PROBE_FROM:  # after a snapshot: skip what it covers
            start = await self._after(stream_id, gt)
        out: list[StoredEvent] = []
        for stored in await self._store.read(stream_id, start):
            record = stored.data
            if not isinstance(record, Record):
                continue
            version = record.originator_version
            if (gt is not None and version <= gt) or (lte is not None and version > lte):
                continue
            oid: UUID | str = UUID(str(originator_id)) if record.uuid else str(originator_id)
            out.append(StoredEvent(oid, version, record.topic, record.state))
        if desc:
            out.reverse()
        return out if limit is None else out[:limit]

    async def _after(self, stream_id: str, gt: int) -> int:
        """The catga version to read from for originator versions above ``gt``: found with one point
        read when the versions run on from 1 (eventsourcing's aggregates) or 0 up to ``gt``, else 0.

        Correct either way: versions grow with the catga version, so if the event at catga version
        ``k`` has originator version ``gt``, every later one is above ``gt`` and no earlier one is.
        """
        for k in (gt - 1, gt):
            probe = await self._store.read(stream_id, k, 1)
            if probe and isinstance(probe[0].data, Record) and probe[0].data.originator_version == gt:
                return k + 1
        return 0


class CatgaApplicationRecorder(CatgaAggregateRecorder, ApplicationRecorder):
    """eventsourcing's ``ApplicationRecorder``: notification ids are catga global positions.

    Ids grow in commit order but may have gaps (other purposes' and other applications' events in the
    same store, and NATS positions ``seq << 10 | index``). Arguments as :class:`CatgaAggregateRecorder`.
    """

    def __init__(
        self,
        store: EventStore,
        loop: LoopThread,
        *,
        purpose: str = "events",
        namespace: str = "",
        timeout: float = 30.0,
    ):
        super().__init__(store, loop, purpose=purpose, namespace=namespace, timeout=timeout)
        self._max_id: int | None = None  # the newest notification id found so far ...
        self._scanned = 0  # ... scanning the global log up to this position

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """Store ``stored_events`` as :meth:`CatgaAggregateRecorder.insert_events`; return their
        notification ids, in the order given."""
        return self._call(self._insert(stored_events, positions=True), "insert_events")

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """At most ``limit`` notifications with ids from ``start`` (or after it) up to ``stop``,
        optionally only of ``topics``, in id order."""
        first = 1 if start is None else (start if inclusive_of_start else start + 1)
        notes, _ = self._call(self._scan(max(first, 1), limit, stop, topics), "select_notifications")
        return notes

    async def _scan(
        self, first: int, limit: int, stop: int | None, topics: Sequence[str]
    ) -> tuple[list[Notification], int]:
        """Notifications from position ``first``, and the last position looked at."""
        wanted = frozenset(topics)
        out: list[Notification] = []
        scanned = first - 1
        prefix = self._prefix
        while len(out) < limit:
            batch = await self._store.read_all(scanned + 1, _PAGE)
            for stored in batch:
                if stop is not None and stored.position > stop:
                    return out, scanned
                scanned = stored.position
                record = stored.data
                if not isinstance(record, Record) or not stored.stream_id.startswith(prefix):
                    continue
                if wanted and record.topic not in wanted:
                    continue
                oid = stored.stream_id[len(prefix) :]
                out.append(
                    Notification(
                        id=stored.position,
                        originator_id=UUID(oid) if record.uuid else oid,
                        originator_version=record.originator_version,
                        topic=record.topic,
                        state=record.state,
                    )
                )
                if len(out) == limit:
                    return out, scanned
            if len(batch) < _PAGE:
                break
        return out, scanned

    def _ours(self, stored: Any) -> bool:
        return isinstance(stored.data, Record) and bool(stored.stream_id.startswith(self._prefix))

    def max_notification_id(self) -> int | None:
        """The newest notification id, None when there is none.

        One read when the store's newest event is this application's (the store tells its last
        position); else a scan of the global log from where the previous call stopped.
        """
        return self._call(self._max_notification_id(), "max_notification_id")

    async def _max_notification_id(self) -> int | None:
        head = await last_position(self._store)
        if head and head > self._scanned:  # the newest event of the store is often this application's
            newest = await self._store.read_all(head, 1)
            if newest and self._ours(newest[0]):
                self._max_id = max(self._max_id or 0, newest[0].position)
                self._scanned = max(self._scanned, newest[0].position)
                return self._max_id
        while True:
            notes, scanned = await self._scan(self._scanned + 1, _PAGE, None, ())
            if notes:
                self._max_id = max(self._max_id or 0, notes[-1].id)
            if scanned <= self._scanned:
                return self._max_id
            self._scanned = max(self._scanned, scanned)

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> CatgaSubscription:
        """Notifications with ids above ``gt``: the recorded ones, then new ones as they are recorded."""
        return CatgaSubscription(self, gt=gt, topics=topics)

    async def _next_after(self, position: int) -> None:
        """Return once the store has an event after ``position`` (any stream)."""
        events: AsyncIterator[Any] = self._store.subscribe_all(position + 1).__aiter__()
        try:
            with contextlib.suppress(StopAsyncIteration):  # the store closed: the next scan says so
                await anext(events)
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()


class CatgaSubscription(Subscription[CatgaApplicationRecorder]):
    """An iterator of notifications that blocks for new ones; :meth:`stop` (from any thread) ends it."""

    def __init__(
        self, recorder: CatgaApplicationRecorder, gt: int | None = None, topics: Sequence[str] = ()
    ) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._buffer: deque[Notification] = deque()
        self._scanned = gt or 0
        self._lock = threading.Lock()
        self._waiting: Future[None] | None = None

    def stop(self) -> None:
        """Stop the subscription: the iteration ends, a blocked ``next()`` returns at once."""
        super().stop()
        with self._lock:
            waiting = self._waiting
        if waiting is not None:
            waiting.cancel()

    def __next__(self) -> Notification:
        recorder = self._recorder
        while True:
            if self._has_been_stopped:
                raise StopIteration
            if self._buffer:
                note = self._buffer.popleft()
                self._last_notification_id = note.id
                return note
            notes, scanned = recorder._call(
                recorder._scan(self._scanned + 1, _PAGE, None, self._topics), "subscription"
            )
            self._scanned = max(self._scanned, scanned)
            if notes:
                self._buffer.extend(notes)
                continue
            waiting = recorder._loop.submit(recorder._next_after(self._scanned))
            with self._lock:
                self._waiting = waiting
            if self._has_been_stopped:
                waiting.cancel()
            try:
                with contextlib.suppress(CancelledError):
                    waiting.result()
            except CatgaError as exc:
                raise _translated(exc) from exc
            finally:
                with self._lock:
                    self._waiting = None
