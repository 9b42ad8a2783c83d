"""A distributed lock on Redis with fencing tokens and automatic renewal.

Acquire is one Lua script: ``SET P:lock:<key> <token> NX PX <ttl>`` and, only if that succeeded,
``INCR P:fence:<key>`` — the new value is the lease's **fencing token**, strictly increasing per key
across all holders (the counter never expires). Release and extend are Lua scripts that act only if the
key still holds this lease's token, so a holder whose lease expired cannot release or extend the next
holder's lease (:class:`~catga.errors.LockNotOwnedError`). Acquire + release = 2 round trips.

Tokens are per :class:`RedisLease` object (a random per-lock prefix + a counter), never per thread or
task — unlike redis-py's ``Lock``, which keeps its token thread-local.

A TTL lock alone cannot protect a resource from a holder that paused past its TTL (GC, swap, network):
pass ``lease.fencing_token`` with every write and have the resource reject tokens lower than the highest
it has seen. The same holds across a failover (Sentinel, Redis Cluster): replication is asynchronous,
so the promoted replica may have lost the lock key -- a second holder can then acquire it while the
first still works -- and the last fencing increments. The fencing token is what keeps the two out of
the same critical section, and it only does if the counter survived: use ``wait_replicas`` on the
client for locks that guard anything important. See ``docs/redis.md``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import time

from catga._lease import LeaseBase, observed_acquire
from catga.errors import ConfigurationError, LockNotAcquiredError, LockNotOwnedError
from catga.protocols import validate_identifier
from catga.redis._base import RedisStoreBase, positive_ms
from catga.redis.connection import RedisClient, Script

__all__ = ("RedisLease", "RedisLock")

logger = logging.getLogger("catga.redis.lock")

_ACQUIRE = Script(
    """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return {redis.call('PTTL', KEYS[1])}
""",
    "lock-acquire",
)
_RELEASE = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
    "lock-release",
)
_EXTEND = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
""",
    "lock-extend",
)

_MIN_SLEEP = 0.002
_MAX_SLEEP = 0.1


class RedisLease(LeaseBase):
    """A held lock (see :class:`~catga.protocols.Lease`). Use ``async with`` to release on exit.

    Attributes:
        key: the lock key.
        token: this holder's random token.
        fencing_token: strictly increasing per key; pass it to downstream writes.
        ttl: the lease time in seconds.
        lost: True when auto-renewal found the lease taken or expired.
    """

    __slots__ = ("_lock", "_redis_key", "fencing_token", "key", "token", "ttl")

    def __init__(self, lock: RedisLock, key: str, redis_key: str, token: str, fencing_token: int, ttl: float):
        self._lock = lock
        self.key = key
        self._redis_key = redis_key
        self.token = token
        self.fencing_token = fencing_token
        self.ttl = ttl
        self._init_lease(lock._renewals)

    async def release(self) -> None:
        """Release the lock.

        Raises:
            LockNotOwnedError: the lease expired or was taken over (or was already released).
        """
        await self._stop_renewal()
        if self._released:
            raise LockNotOwnedError(self.key)
        done = await self._lock._client.run_script(_RELEASE, (self._redis_key,), (self.token,))
        if done != 1:
            raise LockNotOwnedError(self.key)
        self._released = True

    async def extend(self, ttl: float) -> None:
        """Reset the lease to expire ``ttl`` seconds from now.

        Raises:
            LockNotOwnedError: the lease expired or was taken over.
        """
        ms = positive_ms(ttl, "lock ttl")
        if self._released:
            raise LockNotOwnedError(self.key)
        done = await self._lock._client.run_script(_EXTEND, (self._redis_key,), (self.token, ms))
        if done != 1:
            raise LockNotOwnedError(self.key)
        self.ttl = ttl

    def __repr__(self) -> str:
        return f"RedisLease(key={self.key!r}, fencing_token={self.fencing_token}, released={self._released})"


class RedisLock(RedisStoreBase):
    """Distributed lock (see :class:`~catga.protocols.DistributedLock`).

    :meth:`aclose` stops auto-renewals (the leases then expire after their TTL) and closes an owned
    client.

    Args:
        client: an open :class:`~catga.redis.RedisClient` (not closed by :meth:`aclose`); keys live
            under its prefix.

    Example:
        >>> lock = RedisLock.connect("redis://127.0.0.1:6379/0")  # doctest: +SKIP
        >>> async with await lock.acquire("orders:42", ttl=10, wait=2) as lease:  # doctest: +SKIP
        ...     await db.write(..., fencing_token=lease.fencing_token)
    """

    def __init__(self, client: RedisClient, *, owns_client: bool = False) -> None:
        super().__init__(client, owns_client=owns_client)
        self._lock_prefix, self._tail = client.layout.per_id("lock")
        self._fence_prefix = client.layout.per_id("fence")[0]
        self._token_prefix = os.urandom(8).hex() + "-"
        self._counter = itertools.count(1)
        self._renewals: set[asyncio.Task[None]] = set()

    @observed_acquire
    async def acquire(
        self, key: str, *, ttl: float = 30.0, wait: float = 0.0, auto_renew: bool = False
    ) -> RedisLease:
        """Acquire ``key`` for ``ttl`` seconds, retrying for up to ``wait`` seconds (0 = try once).

        Raises:
            LockNotAcquiredError: still held by another holder when ``wait`` ran out.
            InvalidIdentifierError: ``key`` is malformed.
            ConfigurationError: ``ttl`` is not positive or ``wait`` is negative.
        """
        validate_identifier(key, "lock key")
        ms = positive_ms(ttl, "lock ttl")
        if wait < 0:
            raise ConfigurationError(f"lock wait must be >= 0 seconds, got {wait!r}")
        token = f"{self._token_prefix}{next(self._counter)}"
        redis_key = self._lock_prefix + key + self._tail
        keys = (redis_key, self._fence_prefix + key + self._tail)
        args = (token, ms)
        run = self._client.run_script
        reply = await run(_ACQUIRE, keys, args)
        if type(reply) is not int:
            deadline = time.monotonic() + wait
            delay = _MIN_SLEEP
            while type(reply) is not int:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LockNotAcquiredError(key, wait)
                holder_left = reply[0] / 1000 if reply and reply[0] > 0 else delay
                await asyncio.sleep(min(remaining, holder_left, delay * random.uniform(0.5, 1.0)))
                delay = min(delay * 2, _MAX_SLEEP)
                reply = await run(_ACQUIRE, keys, args)
        lease = RedisLease(self, key, redis_key, token, reply, ttl)
        if auto_renew:
            lease._start_renewal()
        return lease

    async def _close(self) -> None:
        tasks = list(self._renewals)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
