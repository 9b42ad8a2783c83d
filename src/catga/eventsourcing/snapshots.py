"""Snapshots: an aggregate's state at a version, so loading replays only the events after it.

A :class:`Snapshot` holds the state as JSON bytes (readable by any client), the stream version it was
taken at, the aggregate type name and the state's schema version. A :class:`SnapshotStore` keeps the
latest snapshot per stream; :class:`MemorySnapshotStore` is the in-process reference implementation.

The :class:`~catga.eventsourcing.Repository` takes a snapshot when a save makes the stream's event count
cross a multiple of ``snapshot_every``, and on load reads the snapshot and then only the events from
``snapshot.version + 1``. Snapshots are an optimisation: a missing, stale-schema or unreadable snapshot
falls back to a full replay, and a failed snapshot write never fails the save.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import msgspec

from catga.eventsourcing._state import decode_json, encode_json
from catga.protocols import validate_identifier

__all__ = ("MemorySnapshotStore", "Snapshot", "SnapshotStore")


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """An aggregate's state at one stream version.

    Attributes:
        stream_id: the aggregate's stream.
        version: the stream version the state includes (the last applied event's version).
        type_name: the aggregate type it belongs to (checked on load).
        state: the state, encoded as JSON.
        taken_at: unix seconds.
        schema_version: the aggregate's ``snapshot_version`` when taken; other versions are ignored.
    """

    stream_id: str
    version: int
    type_name: str
    state: bytes
    taken_at: float
    schema_version: int = 1

    @classmethod
    def of(
        cls, stream_id: str, version: int, type_name: str, state: Any, *, schema_version: int = 1
    ) -> Snapshot:
        """Build a snapshot, encoding ``state`` (anything msgspec encodes, pydantic models too) as JSON.

        Raises:
            SerializationError: the state cannot be encoded.
        """
        return cls(
            stream_id=stream_id,
            version=version,
            type_name=type_name,
            state=encode_json(state),
            taken_at=time.time(),
            schema_version=schema_version,
        )

    def decoded_state(self) -> Any:
        """The state as plain JSON data (dicts, lists, str, numbers...).

        Raises:
            SerializationError: the stored bytes are not valid JSON.
        """
        return decode_json(self.state)


class SnapshotStore(Protocol):
    """Keeps the latest snapshot of each stream.

    Contract:
        * ``get(stream_id)`` returns the stored snapshot or None.
        * ``save(snapshot)`` stores it unless a snapshot with a higher version is already stored (two
          writers racing never replace a newer snapshot with an older one).
        * Stream ids are validated with :func:`~catga.protocols.validate_identifier`.
    """

    async def get(self, stream_id: str) -> Snapshot | None: ...
    async def save(self, snapshot: Snapshot) -> None: ...
    async def aclose(self) -> None: ...


class MemorySnapshotStore:
    """In-process :class:`SnapshotStore` (a dict); the reference implementation and test double."""

    def __init__(self) -> None:
        self._snapshots: dict[str, Snapshot] = {}

    async def get(self, stream_id: str) -> Snapshot | None:
        """The latest snapshot of ``stream_id``, or None."""
        return self._snapshots.get(validate_identifier(stream_id))

    async def save(self, snapshot: Snapshot) -> None:
        """Store ``snapshot`` unless a newer one is already stored."""
        stream_id = validate_identifier(snapshot.stream_id)
        current = self._snapshots.get(stream_id)
        if current is None or current.version <= snapshot.version:
            self._snapshots[stream_id] = snapshot

    async def delete(self, stream_id: str) -> bool:
        """Drop the snapshot of ``stream_id``; return whether there was one."""
        return self._snapshots.pop(validate_identifier(stream_id), None) is not None

    def __len__(self) -> int:
        return len(self._snapshots)

    async def aclose(self) -> None:
        """Nothing to release; present for the protocol."""

    async def __aenter__(self) -> MemorySnapshotStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
