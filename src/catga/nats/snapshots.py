"""Aggregate snapshots in a JetStream KV-layout bucket (default ``catga_snapshots``).

One entry per stream id; its value is the JSON record of :func:`~catga.eventsourcing.encode_snapshot`
(``nats kv get catga_snapshots <stream>`` shows it) and a ``Catga-Version`` header carries the snapshot's
stream version. ``save`` keeps the newest: it reads the entry and writes with a compare-and-set on the
revision it read (``Nats-Expected-Last-Subject-Sequence``), skipping the write when a newer snapshot is
stored, and reads again when another writer got in between. A snapshot is one message: it must fit the
server's ``max_payload`` (1 MiB by default).
"""

from __future__ import annotations

from catga.errors import BackendError
from catga.eventsourcing.snapshots import Snapshot, decode_snapshot, encode_snapshot
from catga.nats._kv import KvEntry, KvStore

__all__ = ("NatsSnapshotStore",)

_HEADER = "Catga-Version"
_RETRIES = 64


class NatsSnapshotStore(KvStore):
    """:class:`~catga.eventsourcing.SnapshotStore` on a NATS KV-layout bucket (default ``catga_snapshots``).

    Options (``source``, ``bucket``, ``storage``, ``replicas``, ``timeout``): see
    :class:`~catga.nats._kv.KvStore`.

    Example:
        >>> snapshots = await NatsSnapshotStore.connect("nats://127.0.0.1:4222")  # doctest: +SKIP
        >>> repo = Repository(store, Account, snapshots=snapshots, snapshot_every=100)  # doctest: +SKIP
    """

    default_bucket = "catga_snapshots"
    _kind = "stream id"

    async def get(self, stream_id: str) -> Snapshot | None:
        """The latest snapshot of ``stream_id``, or None (also for an unreadable record, logged).

        Raises:
            InvalidIdentifierError: ``stream_id`` is invalid (before any I/O).
        """
        entry = await self._bucket.get(stream_id)
        if entry is None:
            return None
        return decode_snapshot(entry.value, f"snapshot of {stream_id!r} in bucket {self.bucket!r}")

    async def save(self, snapshot: Snapshot) -> None:
        """Store ``snapshot`` unless a newer one is stored (compare-and-set on the entry's revision).

        Raises:
            InvalidIdentifierError: the stream id is invalid (before any I/O).
            SerializationError: the snapshot's state is not JSON.
            BackendError: other writers kept winning the compare-and-set (64 tries).
        """
        bucket = self._bucket
        key = snapshot.stream_id
        bucket.subject(key)
        value = encode_snapshot(snapshot)
        header = b"%s: %d\r\n" % (_HEADER.encode(), snapshot.version)
        for _ in range(_RETRIES):
            entry = await bucket.get(key)
            if entry is not None and _version(entry) > snapshot.version:
                return
            last = 0 if entry is None else entry.revision
            if await bucket.write(key, value, last=last, headers=header) is not None:
                return
        raise BackendError(
            f"saving the snapshot of {key!r} lost {_RETRIES} compare-and-set races in bucket "
            f"{self.bucket!r}; too many writers snapshot this stream at once",
            backend="nats",
        )

    async def delete(self, stream_id: str) -> bool:
        """Drop the snapshot of ``stream_id``; return whether there was one.

        Raises:
            InvalidIdentifierError: ``stream_id`` is invalid (before any I/O).
        """
        bucket = self._bucket
        while True:
            entry = await bucket.get(stream_id)
            if entry is None:
                return False
            if await bucket.delete(entry.revision):
                return True


def _version(entry: KvEntry) -> int:
    text = entry.headers.get(_HEADER)
    if text is not None and text.lstrip("-").isdigit():
        return int(text)
    snapshot = decode_snapshot(entry.value, f"snapshot entry {entry.key!r}")
    return -2 if snapshot is None else snapshot.version  # unreadable: any new snapshot replaces it
