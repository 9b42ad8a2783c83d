"""A distributed lock on a JetStream KV-layout bucket, with fencing tokens.

One entry per lock key; its value (msgpack) is the holder's random token and the unix time at which the
lease expires. All changes are server-checked compare-and-set operations:

* acquire: create the entry ("must not exist"), or -- if the current holder's lease has expired --
  overwrite it with a compare-and-set on its revision;
* extend: overwrite with a compare-and-set on the lease's current revision (fails if anybody else wrote);
* release: delete the entry by the lease's current revision (fails if it changed).

The **fencing token** is the stream sequence of the acquiring write: strictly increasing for every
acquisition of any key in the bucket, hence per key. Extending keeps it.

Expiry is decided by comparing the stored expiry time with the reader's clock (sub-second TTLs work);
hosts sharing a lock need clocks in sync to well under the TTL, and a lease should not be used near
its end without extending -- pass the fencing token to downstream writes so they reject stale holders.
Each write also carries a per-message ``Nats-TTL`` (whole seconds, rounded up, +1) so abandoned keys
disappear from the server. Waiting acquirers poll with a capped exponential backoff (10-100 ms).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Unpack

import msgspec
from nats.aio.client import Client

from catga._lease import LeaseBase, observed_acquire
from catga.errors import ConfigurationError, LockNotAcquiredError, LockNotOwnedError
from catga.nats._kv import KvOptions, KvStore
from catga.nats.connection import NatsConnection

__all__ = ("NatsLease", "NatsLock")

_log = logging.getLogger("catga.nats")


class _Holder(msgspec.Struct, array_like=True):
    token: str
    expires_at: float


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_Holder).decode


class NatsLease(LeaseBase):
    """A held NATS lock (see :class:`~catga.protocols.Lease`). Use ``async with`` to release on exit.

    Attributes:
        key: the lock key.
        token: this holder's random token.
        fencing_token: the revision of the acquiring write (strictly increasing per key).
        ttl: the lease time in seconds (of the acquisition or the last extend).
        lost: True when auto-renewal found the lease taken or expired.
    """

    __slots__ = ("_expires_at", "_lock", "_op", "_revision", "fencing_token", "key", "token", "ttl")

    # A release cancelling the renewal waits for it: the revision of a write in flight must not be
    # lost (the renewal's write is shielded; release() then deletes the new revision).
    _await_renewal_on_stop = True

    def __init__(
        self, lock: NatsLock, key: str, token: str, revision: int, ttl: float, expires: float
    ) -> None:
        self.key = key
        self.token = token
        self.fencing_token = revision
        self.ttl = ttl
        self._lock = lock
        self._revision = revision
        self._expires_at = expires
        self._op = asyncio.Lock()
        self._init_lease(lock._renewers)

    def _not_owned(self) -> LockNotOwnedError:
        return LockNotOwnedError(self.key)

    async def release(self) -> None:
        """Release the lock.

        Raises:
            LockNotOwnedError: already released, expired, or taken over by another holder.
        """
        await self._stop_renewal()
        async with self._op:
            if self._released:
                raise self._not_owned()
            self._released = True
            deleted = await self._lock._bucket.delete(self._revision)
            if not deleted or time.time() >= self._expires_at:
                raise self._not_owned()

    async def extend(self, ttl: float) -> None:
        """Reset the lease to expire ``ttl`` seconds from now.

        Raises:
            LockNotOwnedError: released, expired, or taken over.
        """
        if ttl <= 0:
            raise ConfigurationError(f"ttl must be > 0 seconds, got {ttl!r}")
        async with self._op:
            if self._released or time.time() >= self._expires_at:
                raise self._not_owned()
            expires = time.time() + ttl
            value = _encode(_Holder(self.token, expires))
            revision = await self._lock._bucket.write(self.key, value, last=self._revision, ttl=ttl + 1)
            if revision is None:
                raise self._not_owned()
            self._revision = revision
            self._expires_at = expires
            self.ttl = ttl

    async def _renew_once(self) -> None:
        await asyncio.shield(self.extend(self.ttl))

    def __repr__(self) -> str:
        return f"NatsLease(key={self.key!r}, fencing_token={self.fencing_token}, released={self._released})"


class NatsLock(KvStore):
    """:class:`~catga.protocols.DistributedLock` on a NATS KV-layout bucket (default ``catga_locks``).

    Options (``source``, ``bucket``, ``storage``, ``replicas``, ``timeout``): see
    :class:`~catga.nats._kv.KvStore`; use ``replicas=3`` on a cluster (a lock on one node is lost
    with that node).
    """

    default_bucket = "catga_locks"
    _kind = "lock key"

    def __init__(self, source: NatsConnection | Client, **options: Unpack[KvOptions]) -> None:
        super().__init__(source, **options)
        self._renewers: set[asyncio.Task[None]] = set()

    async def _try(self, key: str, token: str, ttl: float) -> NatsLease | None:
        bucket = self._bucket
        expires = time.time() + ttl
        value = _encode(_Holder(token, expires))
        revision = await bucket.write(key, value, last=0, ttl=ttl + 1)
        if revision is None:
            entry = await bucket.get(key)
            if entry is None:
                revision = await bucket.write(key, value, last=0, ttl=ttl + 1)
            elif _decode(entry.value).expires_at <= time.time():
                revision = await bucket.write(key, value, last=entry.revision, ttl=ttl + 1)
        if revision is None:
            return None
        return NatsLease(self, key, token, revision, ttl, expires)

    @observed_acquire
    async def acquire(
        self, key: str, *, ttl: float = 30.0, wait: float = 0.0, auto_renew: bool = False
    ) -> NatsLease:
        """Acquire ``key`` for ``ttl`` seconds, retrying for up to ``wait`` seconds.

        Raises:
            LockNotAcquiredError: still held by another holder after ``wait`` seconds.
            InvalidIdentifierError: ``key`` is invalid (before any I/O).
            ConfigurationError: ``ttl`` is not positive.
        """
        self._bucket.subject(key)
        if ttl <= 0:
            raise ConfigurationError(f"ttl must be > 0 seconds, got {ttl!r}")
        token = secrets.token_hex(16)
        deadline = time.monotonic() + max(0.0, wait)
        delay = 0.01
        while True:
            lease = await self._try(key, token, ttl)
            if lease is not None:
                if auto_renew:
                    lease._start_renewal()
                return lease
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockNotAcquiredError(key, wait)
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.1)

    async def _close(self) -> None:
        tasks = list(self._renewers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
