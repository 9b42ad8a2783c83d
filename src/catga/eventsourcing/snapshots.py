"""Snapshots: an aggregate's state at a version, so loading replays only the events after it.

A :class:`Snapshot` holds the state as JSON bytes (readable by any client), the stream version it was
taken at, the aggregate type name and the state's schema version. A :class:`SnapshotStore` keeps the
latest snapshot per stream; :class:`MemorySnapshotStore` is the in-process reference implementation,
and ``NatsSnapshotStore`` / ``RedisSnapshotStore`` / ``PostgresSnapshotStore`` are the durable ones (all
bound to :class:`~catga.testing.contracts.SnapshotStoreContract`). The durable stores keep one record per
stream, written by :func:`encode_snapshot` (JSON: the state is embedded as JSON, so any client can read
it) and read by :func:`decode_snapshot` (an unreadable record reads as "no snapshot", with a WARNING).

The :class:`~catga.eventsourcing.Repository` takes a snapshot when a save makes the stream's event count
cross a multiple of ``snapshot_every``, and on load reads the snapshot and then only the events from
``snapshot.version + 1``. Snapshots are an optimisation: a missing, stale-schema or unreadable snapshot
falls back to a full replay, and a failed snapshot write never fails the save.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import msgspec

from catga.errors import SerializationError
from catga.eventsourcing._state import decode_json, encode_json
from catga.protocols import validate_identifier

__all__ = ("MemorySnapshotStore", "Snapshot", "SnapshotStore", "decode_snapshot", "encode_snapshot")

logger = logging.getLogger("catga.eventsourcing")


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


class _Record(msgspec.Struct, kw_only=True):
    stream_id: str
    version: int
    type_name: str
    schema_version: int
    taken_at: float
    state: msgspec.Raw


_record_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(_Record)


def encode_snapshot(snapshot: Snapshot) -> bytes:
    """The stored form of ``snapshot``: one JSON object whose ``state`` is the state's JSON itself.

    Raises:
        SerializationError: ``snapshot.state`` is not JSON (build snapshots with :meth:`Snapshot.of`).
    """
    try:
        msgspec.json.decode(snapshot.state)  # embedded as-is below: refuse what would corrupt the record
    except msgspec.DecodeError as exc:
        raise SerializationError(
            f"snapshot of {snapshot.stream_id!r} at version {snapshot.version}: state is not JSON "
            f"({exc}); build snapshots with Snapshot.of(...)"
        ) from exc
    return _record_encoder.encode(
        _Record(
            stream_id=snapshot.stream_id,
            version=snapshot.version,
            type_name=snapshot.type_name,
            schema_version=snapshot.schema_version,
            taken_at=snapshot.taken_at,
            state=msgspec.Raw(snapshot.state),
        )
    )


def decode_snapshot(data: bytes, where: str) -> Snapshot | None:
    """A snapshot from its stored form, or None (logged at WARNING) when the record is unreadable.

    A snapshot is an optimisation: an unreadable one is skipped (the aggregate is then replayed from
    its events), never half-loaded.

    Args:
        data: what :func:`encode_snapshot` wrote.
        where: the record's place, for the log (``"snapshot of 'Account-1' in bucket 'x'"``).
    """
    try:
        record = _record_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        logger.warning("%s is unreadable (%s); ignoring it", where, exc)
        return None
    return Snapshot(
        stream_id=record.stream_id,
        version=record.version,
        type_name=record.type_name,
        state=bytes(record.state),
        taken_at=record.taken_at,
        schema_version=record.schema_version,
    )


class SnapshotStore(Protocol):
    """Keeps the latest snapshot of each stream.

    Contract (:class:`~catga.testing.contracts.SnapshotStoreContract`):
        * ``get(stream_id)`` returns the stored snapshot (every field as saved) or None; a stored record
          that cannot be read is None too (logged), never a half-read snapshot.
        * ``save(snapshot)`` stores it unless a snapshot with a higher version is already stored, checked
          atomically on the server (two writers racing never replace a newer snapshot with an older
          one); an equal version replaces (a re-taken snapshot of a changed schema).
        * ``delete(stream_id)`` drops it and returns whether there was one.
        * Stream ids are validated with :func:`~catga.protocols.validate_identifier` before any I/O.
        * Schema versions are stored, not judged: the :class:`~catga.eventsourcing.Repository` ignores a
          snapshot whose ``schema_version`` or ``type_name`` differs from the aggregate's.
    """

    async def get(self, stream_id: str) -> Snapshot | None: ...
    async def save(self, snapshot: Snapshot) -> None: ...
    async def delete(self, stream_id: str) -> bool: ...
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
