"""Idempotency and inbox records in a JetStream KV-layout bucket, claimed atomically.

One entry per key (message id). Its value (msgpack) holds whether it is completed, the unix time at
which it expires and the stored result. Every state change is a server-checked compare-and-set
(``Nats-Expected-Last-Subject-Sequence``):

* ``claim``: create the entry ("must not exist"); if it exists, read it: a live claim is IN_PROGRESS,
  a live completion is COMPLETED with its result, an expired one is taken over by a compare-and-set on
  its revision. Of N concurrent claims exactly one write succeeds.
* ``complete``: overwrite with the result; ``release``: delete the entry by its revision unless it is
  completed.

Expiry is checked on read against the stored expiry time (so sub-second TTLs work; writers' and
readers' clocks must agree to well under the TTLs used), and every entry also carries a per-message
``Nats-TTL`` (whole seconds, rounded up, +1) so the server eventually deletes forgotten records.
Needs nats-server 2.11+ (per-message TTL).
"""

from __future__ import annotations

import time

import msgspec

from catga.nats._kv import KvStore
from catga.protocols import Claim, ClaimStatus

__all__ = ("NatsIdempotencyStore", "NatsInboxStore")

_RETRIES = 16
_CLAIMED = Claim(ClaimStatus.CLAIMED)
_IN_PROGRESS = Claim(ClaimStatus.IN_PROGRESS)


class _Record(msgspec.Struct, array_like=True):
    done: bool
    expires_at: float
    result: bytes | None = None


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_Record).decode


class NatsIdempotencyStore(KvStore):
    """:class:`~catga.protocols.IdempotencyStore` (and inbox) on a NATS KV-layout bucket.

    The default bucket is ``catga_idempotency``. Options (``source``, ``bucket``, ``storage``,
    ``replicas``, ``timeout``): see :class:`~catga.nats._kv.KvStore`.
    """

    default_bucket = "catga_idempotency"
    _kind = "idempotency key"

    async def claim(self, key: str, lock_ttl: float = 30.0) -> Claim:
        """Claim ``key`` for ``lock_ttl`` seconds, or report who has it (one atomic step).

        Raises:
            InvalidIdentifierError: ``key`` is invalid (before any I/O).
        """
        bucket = self._bucket
        bucket.subject(key)
        for _ in range(_RETRIES):
            claimed = _encode(_Record(False, time.time() + lock_ttl))
            if await bucket.write(key, claimed, last=0, ttl=lock_ttl + 1) is not None:
                return _CLAIMED
            entry = await bucket.get(key)
            if entry is None:
                continue  # deleted in between: try to create again
            record = _decode(entry.value)
            if record.expires_at > time.time():
                if record.done:
                    return Claim(ClaimStatus.COMPLETED, record.result or b"")
                return _IN_PROGRESS
            if await bucket.write(key, claimed, last=entry.revision, ttl=lock_ttl + 1) is not None:
                return _CLAIMED
        return _IN_PROGRESS  # others keep winning the races: someone holds it

    async def complete(self, key: str, result: bytes = b"", ttl: float = 86400.0) -> None:
        """Store ``result`` for ``key``; claims return it for ``ttl`` seconds.

        Raises:
            InvalidIdentifierError: ``key`` is invalid.
        """
        record = _Record(True, time.time() + ttl, bytes(result))
        await self._bucket.write(key, _encode(record), last=None, ttl=ttl + 1)

    async def release(self, key: str) -> None:
        """Drop an unfinished claim on ``key``; a completed record is kept.

        Raises:
            InvalidIdentifierError: ``key`` is invalid.
        """
        bucket = self._bucket
        bucket.subject(key)
        for _ in range(_RETRIES):
            entry = await bucket.get(key)
            if entry is None or _decode(entry.value).done:
                return
            if await bucket.delete(entry.revision):
                return


#: The inbox is the same store keyed by message id.
NatsInboxStore = NatsIdempotencyStore
