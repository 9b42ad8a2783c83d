"""In-memory event store: the reference implementation of :class:`~catga.protocols.EventStore`.

Design (the origin's lock review, translated to CPython; each choice measured, figures in
``docs/benchmarks.md``, *Design figures*):

* **Writes** take one ``threading.Lock`` for the whole store, around the expected-version check, the
  position assignment and the list appends, with no ``await`` inside: an append is atomic for asyncio
  tasks and for OS threads alike. A per-stream lock (the origin's design) would buy nothing here: global
  positions must be handed out in commit order, which needs a store-wide critical section anyway, and
  the GIL runs one writer at a time; it would only add a second acquire/release. The lock is taken
  with explicit ``acquire()``/``release()``, cheaper than a ``with`` block on CPython 3.11.
* **Reads** take no lock. Each stream is an append-only ``list``; a read is one slice. A slice or an
  ``extend`` is a single C call that the GIL (or, on free-threaded builds, the list's own lock) keeps
  atomic, so a reader sees all events of an append or none. The alternative, a copy-on-write ``tuple``
  per stream, was measured and rejected: its reads are slower (a slice plus ``list()``, since the
  protocol returns a list) and its appends grow with the stream (copy-on-write is O(length)).
* **Positions** are indexes into one global append-only list (position ``p`` is at index ``p - 1``: the
  memory store has no gaps); ``read_all`` slices it.
* **subscribe_all** waits on an ``asyncio`` future per waiting subscriber, registered under the lock
  together with a re-check of the last position (no lost wake-ups). An append wakes waiters of its own
  event loop directly and those of other loops with ``call_soon_threadsafe``.

Throughput against eventsourcing's POPO recorder: ``catga bench eventstore-memory`` (figures in
``docs/benchmarks.md``).

Thread-safety: every method is thread-safe. The async methods never block on I/O; ``append_sync``,
``read_sync``, ``version_sync`` and ``read_all_sync`` are the same operations for plain threads.

Events are stored as the objects given (not copies): treat them, and ``StoredEvent.metadata``, as
immutable. Pass a ``registry`` to check at append time that every event encodes (as a remote store would
require); without one, any object is accepted and its type name is :func:`catga.messages.type_name`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence

from catga._payload import DEFAULT_MAX_PAYLOAD, check_max_payload
from catga.errors import ConcurrencyError, ConfigurationError, PayloadTooLargeError, SerializationError
from catga.memory._wakeup import Waiter, notify
from catga.messages import type_name as _default_type_name
from catga.protocols import ANY, NO_STREAM, StoredEvent, validate_identifier
from catga.serialization import TypeRegistry

__all__ = ("MemoryEventStore",)

_SUBSCRIBE_BATCH = 512


class MemoryEventStore:
    """Event streams in process memory, with optimistic concurrency and a global ordered feed.

    Args:
        registry: when given, every appended event must encode with it (checked before anything is
            stored; a failure raises :class:`~catga.errors.SerializationError`) and type names come from
            it. Events are still stored as objects, not bytes.
        max_payload: with a registry, the largest encoded event accepted, in bytes (default 1 MiB, as
            on the other backends); a larger one raises :class:`~catga.errors.PayloadTooLargeError`
            and nothing of the append is stored. Without a registry nothing is encoded or measured.

    Example:
        >>> store = MemoryEventStore()
        >>> store.append_sync("order-1", [OrderPlaced("order-1", 42)], NO_STREAM)  # doctest: +SKIP
        0
    """

    __slots__ = ("_all", "_closed", "_lock", "_max_payload", "_names", "_registry", "_streams", "_waiters")

    def __init__(
        self, *, registry: TypeRegistry | None = None, max_payload: int = DEFAULT_MAX_PAYLOAD
    ) -> None:
        self._registry = registry
        self._max_payload = check_max_payload(max_payload)
        self._streams: dict[str, list[StoredEvent]] = {}
        self._all: list[StoredEvent] = []
        self._lock = threading.Lock()
        self._names: dict[type, str] = {}
        self._waiters: list[Waiter] = []
        self._closed = False

    # ---------------------------------------------------------------------------------------------
    # writes

    def append_sync(
        self,
        stream_id: str,
        events: Sequence[object],
        expected_version: int = ANY,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Append ``events`` atomically; the blocking form of :meth:`append`, safe from any thread."""
        return self._append(stream_id, events, expected_version, metadata)

    def _append(
        self,
        stream_id: str,
        events: Sequence[object],
        expected_version: int,
        metadata: Mapping[str, str] | None,
    ) -> int:
        # Positional and shared by append and append_sync: a keyword call costs more on CPython 3.11.
        streams = self._streams
        try:
            stream = streams.get(stream_id)
        except TypeError:  # unhashable: not a str
            stream = None
        if stream is None:
            validate_identifier(stream_id)
        if expected_version.__class__ is not int or expected_version < ANY:
            raise ConfigurationError(
                f"invalid expected_version {expected_version!r} for stream {stream_id!r}: use ANY, "
                "NO_STREAM or a version >= 0"
            )
        if self._registry is not None:
            _check_encodes(self._registry, events, self._max_payload, stream_id)
        names = self._names
        ts = time.time()
        waiters: list[Waiter] | None = None
        lock = self._lock
        lock.acquire()  # explicit acquire/release: cheaper than `with` on CPython 3.11
        try:
            if stream is None:
                stream = streams.get(stream_id)  # another writer may have created it
            current = -1 if stream is None else len(stream) - 1
            if expected_version != ANY and expected_version != current:
                raise ConcurrencyError(
                    stream_id, "NO_STREAM" if expected_version == NO_STREAM else expected_version, current
                )
            all_events = self._all
            position = len(all_events)
            if len(events) == 1:  # the common case, without a temporary list
                event = events[0]
                cls = event.__class__
                version = current + 1
                stored = StoredEvent(
                    stream_id,
                    version,
                    position + 1,
                    names.get(cls) or self._name_of(cls),
                    event,
                    ts,
                    dict(metadata) if metadata else {},
                )
                if stream is None:
                    streams[stream_id] = [stored]
                else:
                    stream.append(stored)
                all_events.append(stored)
            else:
                if not events:
                    return current
                version = current
                new: list[StoredEvent] = []
                for event in events:
                    cls = event.__class__
                    version += 1
                    position += 1
                    new.append(
                        StoredEvent(
                            stream_id,
                            version,
                            position,
                            names.get(cls) or self._name_of(cls),
                            event,
                            ts,
                            dict(metadata) if metadata else {},
                        )
                    )
                if stream is None:
                    streams[stream_id] = new
                else:
                    stream.extend(new)
                all_events.extend(new)
            if self._waiters:
                waiters, self._waiters = self._waiters, []
        finally:
            lock.release()
        if waiters is not None:
            notify(waiters)
        return version

    async def append(
        self,
        stream_id: str,
        events: Sequence[object],
        expected_version: int = ANY,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Append ``events`` to ``stream_id`` atomically; return the new stream version.

        Args:
            stream_id: a valid identifier (:func:`~catga.protocols.validate_identifier`).
            events: the events; an empty sequence stores nothing and returns the current version.
            expected_version: :data:`~catga.protocols.ANY`, :data:`~catga.protocols.NO_STREAM` or the
                exact current version.
            metadata: string metadata copied onto each stored event.

        Raises:
            ConcurrencyError: the stream's version is not ``expected_version``; nothing was stored.
            InvalidIdentifierError: ``stream_id`` is malformed.
            SerializationError: an event does not encode with the store's registry.
        """
        return self._append(stream_id, events, expected_version, metadata)

    def _name_of(self, cls: type) -> str:
        name = self._registry.name_of(cls) if self._registry is not None else _default_type_name(cls)
        self._names[cls] = name
        return name

    # ---------------------------------------------------------------------------------------------
    # reads (no lock)

    def read_sync(
        self, stream_id: str, from_version: int = 0, max_count: int | None = None
    ) -> list[StoredEvent]:
        """The blocking form of :meth:`read`, safe from any thread."""
        try:
            events = self._streams.get(stream_id)
        except TypeError:
            events = None
        if events is None:
            validate_identifier(stream_id)
            return []
        if from_version < 0:
            from_version = 0
        if max_count is None:
            return events[from_version:]
        if max_count < 0:
            raise ConfigurationError(f"max_count must be >= 0 or None, got {max_count}")
        return events[from_version : from_version + max_count]

    async def read(
        self, stream_id: str, from_version: int = 0, max_count: int | None = None
    ) -> list[StoredEvent]:
        """Events of one stream with ``version >= from_version``, oldest first, at most ``max_count``.

        An unknown stream reads as ``[]``. The fast path is a dict lookup and a list slice.

        Raises:
            InvalidIdentifierError: ``stream_id`` is malformed.
            ConfigurationError: ``max_count`` is negative.
        """
        try:
            events = self._streams.get(stream_id)
        except TypeError:
            events = None
        if events is None:
            validate_identifier(stream_id)
            return []
        if from_version < 0:
            from_version = 0
        if max_count is None:
            return events[from_version:]
        if max_count < 0:
            raise ConfigurationError(f"max_count must be >= 0 or None, got {max_count}")
        return events[from_version : from_version + max_count]

    def version_sync(self, stream_id: str) -> int:
        """The blocking form of :meth:`version`."""
        try:
            events = self._streams.get(stream_id)
        except TypeError:
            events = None
        if events is None:
            validate_identifier(stream_id)
            return -1
        return len(events) - 1

    async def version(self, stream_id: str) -> int:
        """The stream's current version, -1 when it has no event.

        Raises:
            InvalidIdentifierError: ``stream_id`` is malformed.
        """
        return self.version_sync(stream_id)

    def read_all_sync(self, from_position: int = 1, max_count: int | None = None) -> list[StoredEvent]:
        """The blocking form of :meth:`read_all`."""
        start = from_position - 1 if from_position > 1 else 0
        if max_count is None:
            return self._all[start:]
        if max_count < 0:
            raise ConfigurationError(f"max_count must be >= 0 or None, got {max_count}")
        return self._all[start : start + max_count]

    async def read_all(self, from_position: int = 1, max_count: int | None = None) -> list[StoredEvent]:
        """Events of every stream with ``position >= from_position``, in position (commit) order."""
        return self.read_all_sync(from_position, max_count)

    @property
    def last_position(self) -> int:
        """Position of the newest event, 0 when the store is empty."""
        return len(self._all)

    # ---------------------------------------------------------------------------------------------
    # subscription

    async def subscribe_all(self, from_position: int = 1) -> AsyncIterator[StoredEvent]:
        """Yield every event from ``from_position`` on: first the stored ones, then new ones live.

        The iterator ends when the store is closed. Stop it earlier with ``aclose()`` or by cancelling
        the consuming task. Appends from other threads and event loops wake it too.
        """
        position = from_position if from_position > 1 else 1
        loop = asyncio.get_running_loop()
        while True:
            batch = self._all[position - 1 : position - 1 + _SUBSCRIBE_BATCH]
            if batch:
                for event in batch:
                    yield event
                position = batch[-1].position + 1
                continue
            if self._closed:
                return
            fut: asyncio.Future[None] = loop.create_future()
            waiter: Waiter = (loop, fut)
            with self._lock:
                if len(self._all) >= position or self._closed:
                    continue
                self._waiters.append(waiter)
            try:
                await fut
            finally:
                if fut.cancelled() or not fut.done():  # not woken: take the waiter back out
                    with self._lock:
                        if waiter in self._waiters:
                            self._waiters.remove(waiter)

    # ---------------------------------------------------------------------------------------------
    # lifecycle

    async def aclose(self) -> None:
        """End live subscriptions. Idempotent; the stored events stay readable."""
        with self._lock:
            self._closed = True
            waiters, self._waiters = self._waiters, []
        notify(waiters)

    async def __aenter__(self) -> MemoryEventStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"MemoryEventStore(streams={len(self._streams)}, events={len(self._all)})"


def _check_encodes(registry: TypeRegistry, events: Sequence[object], limit: int, stream_id: str) -> None:
    """Raise SerializationError unless every event encodes with ``registry``, PayloadTooLargeError
    when one is over ``limit`` bytes."""
    for event in events:
        try:
            body = registry.encode(event)[1]
        except SerializationError:
            raise
        except (TypeError, ValueError) as exc:  # e.g. msgspec refusing the type at registration
            raise SerializationError(f"cannot encode {type(event).__qualname__}: {exc}") from exc
        if len(body) > limit:
            raise PayloadTooLargeError(
                len(body), limit, destination=stream_id, backend="memory", what="event"
            )
