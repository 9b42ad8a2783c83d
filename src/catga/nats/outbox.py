"""An outbox on a JetStream KV-layout bucket (stream with atomic batch publish enabled).

One entry per message id; the value (msgpack) is the :class:`~catga.protocols.OutboxMessage` plus the
end of its current lease. Every change is a server-checked compare-and-set on the entry's revision:

* ``add``: one message is a create ("must not exist", so a duplicate id is ignored and the first one
  wins, whatever its state); several are one JetStream **atomic batch** of creates -- all stored or
  none. If the batch is rejected because some ids exist, those are dropped and the rest retried.
  JetStream allows 1000 messages per atomic batch; larger adds are split (atomic per 1000). On file
  storage an atomic batch costs a few milliseconds (the server stages it), a single add one round trip.
* ``fetch_pending``: reads the bucket, picks PENDING messages that are due and not leased, oldest
  ``created_at`` first, and leases each with a compare-and-set -- a concurrent relay that read the same
  entry loses the race and moves on, so two relays never get the same message.
* ``mark_published`` / ``mark_failed`` / ``purge_published``: compare-and-set updates / deletes by
  revision, retried on conflict.

Scans read every entry of the bucket (batch direct get, 256 per request): cost grows with the number of
stored messages, so purge published ones regularly (the relay does).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

import msgspec

from catga.errors import ConfigurationError, ConflictError
from catga.nats._kv import KvEntry, KvStore
from catga.nats.connection import OUTBOX_SERVER
from catga.protocols import OutboxMessage, OutboxStatus

__all__ = ("NatsOutboxStore",)

_BATCH = 1000
_RETRIES = 16


class _Record(msgspec.Struct, array_like=True):
    message: OutboxMessage
    lease_until: float = 0.0


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_Record).decode


class NatsOutboxStore(KvStore):
    """:class:`~catga.protocols.OutboxStore` on a NATS KV-layout bucket (default ``catga_outbox``).

    Options (``source``, ``bucket``, ``storage``, ``replicas``, ``timeout``): see
    :class:`~catga.nats._kv.KvStore`.
    """

    default_bucket = "catga_outbox"
    _kind = "outbox message id"
    _identifiers = False
    _atomic = True
    _needs = (OUTBOX_SERVER, "atomic batch publish")

    async def _scan(self) -> list[tuple[KvEntry, _Record]]:
        out = []
        async with contextlib.aclosing(self._bucket.scan()) as entries:
            async for entry in entries:
                out.append((entry, _decode(entry.value)))
        return out

    async def add(self, messages: Sequence[OutboxMessage]) -> None:
        """Store ``messages`` atomically; ids already stored are ignored (the first one wins).

        Raises:
            ConfigurationError: an item is not an :class:`~catga.protocols.OutboxMessage`.
            InvalidIdentifierError: an id is empty.
        """
        unique: dict[str, bytes] = {}
        for message in messages:
            if not isinstance(message, OutboxMessage):
                raise ConfigurationError(f"add() takes OutboxMessage objects, got {message!r}")
            self._bucket.subject(message.id)
            if message.id not in unique:
                unique[message.id] = _encode(_Record(message))
        items = list(unique.items())
        for start in range(0, len(items), _BATCH):
            await self._add_batch(items[start : start + _BATCH])

    async def _add_batch(self, items: list[tuple[str, bytes]]) -> None:
        bucket = self._bucket
        for _ in range(_RETRIES):
            if not items or await bucket.create_many(items) or len(items) == 1:
                return  # stored, or the only one exists already (ignored)
            entries = await asyncio.gather(*(bucket.get(key) for key, _ in items))
            items = [item for item, entry in zip(items, entries, strict=True) if entry is None]
        raise ConflictError(
            f"could not add {len(items)} outbox messages: their ids keep being created and deleted "
            "concurrently; retry the add"
        )

    async def fetch_pending(self, limit: int = 100, lease: float = 30.0) -> list[OutboxMessage]:
        """Lease up to ``limit`` due PENDING messages for ``lease`` seconds, oldest first."""
        if limit <= 0:
            return []
        now = time.time()
        candidates = [
            (entry, record)
            for entry, record in await self._scan()
            if record.message.status == OutboxStatus.PENDING
            and record.message.next_attempt_at <= now
            and record.lease_until <= now
        ]
        candidates.sort(key=lambda c: (c[1].message.created_at, c[0].revision))
        bucket = self._bucket

        async def take(entry: KvEntry, record: _Record) -> OutboxMessage | None:
            leased = _Record(record.message, time.time() + lease)
            revision = await bucket.write(entry.key, _encode(leased), last=entry.revision)
            return None if revision is None else record.message

        out: list[OutboxMessage] = []
        position = 0
        while len(out) < limit and position < len(candidates):
            chunk = candidates[position : position + limit - len(out)]
            position += len(chunk)
            for message in await asyncio.gather(*(take(entry, record) for entry, record in chunk)):
                if message is not None:
                    out.append(message)
        return out

    async def _modify(self, id: str, published: bool, error: str, retry_at: float | None) -> None:
        bucket = self._bucket
        for _ in range(_RETRIES):
            entry = await bucket.get(id)
            if entry is None:
                return
            message = _decode(entry.value).message
            if published:
                if message.status == OutboxStatus.PUBLISHED:
                    return
                message.status = OutboxStatus.PUBLISHED
            else:
                message.attempts += 1
                message.last_error = error
                if retry_at is None:
                    message.status = OutboxStatus.DEAD
                else:
                    message.next_attempt_at = retry_at
            if await bucket.write(id, _encode(_Record(message)), last=entry.revision) is not None:
                return

    async def mark_published(self, ids: Sequence[str]) -> None:
        """Mark messages PUBLISHED (idempotent; unknown ids are ignored)."""
        for id in ids:
            self._bucket.subject(id)
        await asyncio.gather(*(self._modify(id, True, "", None) for id in dict.fromkeys(ids)))

    async def mark_failed(self, id: str, error: str, retry_at: float | None) -> None:
        """Count a failed attempt: retry at ``retry_at`` (ending the lease), or DEAD when None."""
        await self._modify(id, False, error, retry_at)

    async def get(self, id: str) -> OutboxMessage | None:
        """The message with this id, whatever its state, or None."""
        entry = await self._bucket.get(id)
        return None if entry is None else _decode(entry.value).message

    async def count(self, status: OutboxStatus = OutboxStatus.PENDING) -> int:
        """Number of messages in ``status``."""
        return sum(1 for _, record in await self._scan() if record.message.status == status)

    async def purge_published(self, older_than: float) -> int:
        """Delete PUBLISHED messages created before ``older_than`` (unix seconds); return how many."""
        doomed = [
            entry
            for entry, record in await self._scan()
            if record.message.status == OutboxStatus.PUBLISHED and record.message.created_at < older_than
        ]
        results = await asyncio.gather(*(self._bucket.delete(entry.revision) for entry in doomed))
        return sum(results)
