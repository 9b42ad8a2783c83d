"""The repository: load aggregates from an event store and save their new events atomically.

``Repository(store, Account)`` maps aggregate ``"42"`` to stream ``"Account-42"`` and

* :meth:`~Repository.load` replays the stream (from the latest snapshot when a snapshot store is given);
* :meth:`~Repository.save` appends the uncommitted events with the *right* expected version: a new
  aggregate (version -1) uses ``NO_STREAM`` so two creators of the same id cannot both win, a loaded one
  uses exactly the version it was loaded at, so a stale writer gets
  :class:`~catga.errors.ConcurrencyError` (raised unchanged from the store) instead of overwriting.

It depends only on the :class:`~catga.protocols.EventStore` protocol, so it works on every backend.
With :mod:`catga.otel` installed, each read and append is a span with duration metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

import catga._observe as _observe
from catga.errors import ConfigurationError, NotFoundError, SerializationError
from catga.eventsourcing.aggregate import Aggregate
from catga.eventsourcing.snapshots import Snapshot, SnapshotStore
from catga.protocols import NO_STREAM, EventStore, validate_identifier

__all__ = ("Repository",)

A = TypeVar("A", bound=Aggregate)

logger = logging.getLogger("catga.eventsourcing")


class Repository(Generic[A]):
    """Loads and saves aggregates of one type.

    Args:
        store: any :class:`~catga.protocols.EventStore`.
        aggregate_type: the aggregate class.
        prefix: stream id prefix; stream ids are ``f"{prefix}-{aggregate_id}"``. Default: the class name.
        factory: builds an empty aggregate from an id; default ``aggregate_type(id)``.
        snapshots: where snapshots live; None disables snapshots.
        snapshot_every: take a snapshot when a save makes the stream's event count cross a multiple of
            this number (needs ``snapshots``). None: never automatically (see :meth:`save_snapshot`).

    Raises:
        ConfigurationError: an invalid prefix, ``snapshot_every < 1``, or ``snapshot_every`` without a
            snapshot store.

    Example:
        >>> repo = Repository(MemoryEventStore(), Account)
        >>> account = Account.open("42", owner="ada")
        >>> await repo.save(account)
        >>> (await repo.load("42")).owner
        'ada'
    """

    def __init__(
        self,
        store: EventStore,
        aggregate_type: type[A],
        *,
        prefix: str | None = None,
        factory: Callable[[str], A] | None = None,
        snapshots: SnapshotStore | None = None,
        snapshot_every: int | None = None,
    ) -> None:
        if snapshot_every is not None:
            if snapshot_every < 1:
                raise ConfigurationError(f"snapshot_every must be >= 1, got {snapshot_every}")
            if snapshots is None:
                raise ConfigurationError(
                    "snapshot_every needs a snapshot store: pass snapshots=MemorySnapshotStore() or another"
                )
        self.store = store
        self.aggregate_type = aggregate_type
        self.prefix = validate_identifier(
            aggregate_type.__name__ if prefix is None else prefix, "stream prefix"
        )
        self._factory: Callable[[str], A] = aggregate_type if factory is None else factory
        self.snapshots = snapshots
        self.snapshot_every = snapshot_every
        self._type_name = f"{aggregate_type.__module__}.{aggregate_type.__qualname__}"

    def stream_id(self, aggregate_id: str) -> str:
        """The stream of an aggregate: ``f"{prefix}-{aggregate_id}"``.

        Raises:
            InvalidIdentifierError: the resulting stream id is not a valid identifier.
        """
        return validate_identifier(f"{self.prefix}-{aggregate_id}")

    async def load(self, aggregate_id: str) -> A:
        """Rebuild an aggregate from its snapshot (if any) and events.

        Raises:
            NotFoundError: the stream has no events and there is no snapshot.
            InvalidIdentifierError: the id makes an invalid stream id.
        """
        aggregate = await self.get_or_none(aggregate_id)
        if aggregate is None:
            raise NotFoundError(
                f"{self.aggregate_type.__qualname__} {aggregate_id!r} not found "
                f"(stream {self.stream_id(aggregate_id)!r} has no events); create it first"
            )
        return aggregate

    async def get_or_none(self, aggregate_id: str) -> A | None:
        """Like :meth:`load`, but return None when the aggregate does not exist."""
        stream_id = self.stream_id(aggregate_id)
        snapshots = self.snapshots
        aggregate = None
        if snapshots is not None:
            aggregate = await self._from_snapshot(snapshots, aggregate_id, stream_id)
        if aggregate is None:
            aggregate = self._factory(aggregate_id)
        probe = _observe.probe
        if probe is None:
            events = await self.store.read(stream_id, aggregate.version + 1)
        else:
            with probe.store("read", _observe.system_of(self.store), stream_id) as span:
                events = await self.store.read(stream_id, aggregate.version + 1)
                span.count(len(events))
        aggregate.load_from_history(events)
        if aggregate.version < 0:
            return None
        return aggregate

    async def save(self, aggregate: A, *, metadata: Mapping[str, str] | None = None) -> int:
        """Append the aggregate's uncommitted events atomically; return the new stream version.

        The expected version is ``NO_STREAM`` for a new aggregate (version -1), else the version it was
        loaded at. On success the events are marked committed and ``aggregate.version`` updated; with no
        uncommitted events nothing is written.

        Args:
            aggregate: the aggregate to save.
            metadata: string metadata stored with each event (correlation ids...).

        Raises:
            ConcurrencyError: the stream changed since the aggregate was loaded (or a new aggregate's
                stream already exists); raised unchanged from the store, nothing is written and the
                aggregate keeps its uncommitted events. Reload and retry the command.
        """
        events = aggregate.uncommitted_events
        if not events:
            return aggregate.version
        before = aggregate.version
        expected = NO_STREAM if before < 0 else before
        stream_id = self.stream_id(aggregate.id)
        probe = _observe.probe
        if probe is None:
            version = await self.store.append(stream_id, events, expected, metadata=metadata)
        else:
            with probe.store("append", _observe.system_of(self.store), stream_id) as span:
                span.count(len(events))
                version = await self.store.append(stream_id, events, expected, metadata=metadata)
        aggregate.mark_committed(version)
        every = self.snapshot_every
        if every is not None and (before + 1) // every < (version + 1) // every:
            try:
                await self.save_snapshot(aggregate)
            except Exception:  # an optimisation must not fail a committed save
                logger.warning(
                    "snapshot of stream %r at version %d failed; the events are saved",
                    self.stream_id(aggregate.id),
                    version,
                    exc_info=True,
                )
        return version

    async def save_snapshot(self, aggregate: A) -> Snapshot:
        """Store a snapshot of a saved aggregate now; return it.

        Raises:
            ConfigurationError: no snapshot store, or the aggregate has uncommitted events or cannot be
                snapshotted (see :meth:`~catga.eventsourcing.Aggregate.snapshot_state`).
        """
        if self.snapshots is None:
            raise ConfigurationError("this repository has no snapshot store; pass snapshots=...")
        if aggregate.uncommitted_events or aggregate.version < 0:
            raise ConfigurationError(
                f"save aggregate {aggregate.id!r} before snapshotting it: "
                "a snapshot must match a stored version"
            )
        snapshot = Snapshot.of(
            self.stream_id(aggregate.id),
            aggregate.version,
            self._type_name,
            aggregate.snapshot_state(),
            schema_version=aggregate.snapshot_version,
        )
        await self.snapshots.save(snapshot)
        return snapshot

    async def _from_snapshot(self, snapshots: SnapshotStore, aggregate_id: str, stream_id: str) -> A | None:
        snapshot = await snapshots.get(stream_id)
        if snapshot is None:
            return None
        if (
            snapshot.type_name != self._type_name
            or snapshot.schema_version != self.aggregate_type.snapshot_version
        ):
            logger.debug("ignoring snapshot of %r: type or schema version changed", stream_id)
            return None
        aggregate = self._factory(aggregate_id)
        try:
            aggregate.restore_snapshot(snapshot.decoded_state())
        except SerializationError:
            logger.warning(
                "snapshot of stream %r at version %d is unreadable; replaying all events",
                stream_id,
                snapshot.version,
                exc_info=True,
            )
            return None
        aggregate.version = snapshot.version
        return aggregate

    def __repr__(self) -> str:
        return f"Repository({self.aggregate_type.__qualname__}, prefix={self.prefix!r})"
