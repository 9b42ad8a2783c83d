"""Aggregate snapshots on Redis: one hash ``P:snap:<stream>`` per stream.

Fields: ``version`` (the snapshot's stream version) and ``record`` (the JSON record of
:func:`~catga.eventsourcing.encode_snapshot`, readable with ``HGET``). ``save`` is one Lua script that
writes only when no newer version is stored, so racing writers keep the newest snapshot.
"""

from __future__ import annotations

from catga.eventsourcing.snapshots import Snapshot, decode_snapshot, encode_snapshot
from catga.protocols import validate_identifier
from catga.redis._base import RedisStoreBase
from catga.redis.connection import RedisClient, Script

__all__ = ("RedisSnapshotStore",)

_SAVE = Script(
    """
local v = redis.call('HGET', KEYS[1], 'version')
if v and tonumber(v) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'record', ARGV[2])
return 1
""",
    "snapshot-save",
)


class RedisSnapshotStore(RedisStoreBase):
    """:class:`~catga.eventsourcing.SnapshotStore` on Redis (keys ``P:snap:<stream>``).

    Built on a :class:`~catga.redis.RedisClient` (keys live under its prefix); ``owns_client`` and
    :meth:`connect` as in :class:`~catga.redis._base.RedisStoreBase`.
    """

    def __init__(self, client: RedisClient, *, owns_client: bool = False) -> None:
        super().__init__(client, owns_client=owns_client)
        self._prefix = client.layout.per_id("snap")[0]

    async def get(self, stream_id: str) -> Snapshot | None:
        """The latest snapshot of ``stream_id``, or None (also for an unreadable record, logged).

        Raises:
            InvalidIdentifierError: ``stream_id`` is invalid (before any I/O).
        """
        key = self._prefix + validate_identifier(stream_id)
        record: bytes | None = await self._client.execute("HGET", key, "record")
        if record is None:
            return None
        return decode_snapshot(record, f"snapshot of {stream_id!r} at {key!r}")

    async def save(self, snapshot: Snapshot) -> None:
        """Store ``snapshot`` unless a newer one is stored (one atomic script).

        Raises:
            InvalidIdentifierError: the stream id is invalid (before any I/O).
            SerializationError: the snapshot's state is not JSON.
        """
        key = self._prefix + validate_identifier(snapshot.stream_id)
        await self._client.run_script(_SAVE, (key,), (snapshot.version, encode_snapshot(snapshot)))

    async def delete(self, stream_id: str) -> bool:
        """Drop the snapshot of ``stream_id``; return whether there was one.

        Raises:
            InvalidIdentifierError: ``stream_id`` is invalid (before any I/O).
        """
        return bool(await self._client.execute("DEL", self._prefix + validate_identifier(stream_id)))
