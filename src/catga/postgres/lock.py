"""A distributed lock on a PostgreSQL table, with fencing tokens and automatic renewal.

Table (default ``catga_locks``; created by ``connect()``, ``ensure_schema()``, ``App.start`` or the
first call, see :mod:`catga.postgres._base`)::

    key text PRIMARY KEY, token text, fencing bigint NOT NULL, expires_at timestamptz

One row per key, **never deleted**: a free key has ``token`` and ``expires_at`` NULL, and ``fencing``
keeps the last fencing token handed out, so tokens strictly increase per key across every holder
and every process (dropping the table resets them: don't, while a resource checks them).

* ``acquire``: one atomic statement, ``INSERT ... ON CONFLICT (key) DO UPDATE SET token = new,
  fencing = fencing + 1, expires_at = now() + ttl WHERE expires_at IS NULL OR expires_at <= now()
  RETURNING fencing``: it takes the key only when it is absent, released or expired, so of N
  concurrent acquirers exactly one gets a row back. ``wait`` retries with a short jittered backoff
  (5 ms doubling to 100 ms).
* ``release`` / ``extend``: an ``UPDATE ... WHERE key = $1 AND token = $2 AND expires_at > now()``;
  no row updated means the lease expired, was released or was taken over
  (:class:`~catga.errors.LockNotOwnedError`).
* Expiry is judged by the **server's clock** (``now()``), never the clients', so clients with skewed
  clocks agree. ``now()`` is the start of the statement: a statement that waited on a row lock sees an
  earlier time, which can only make it judge a lease still live or give a shorter lease (safe).
* ``auto_renew=True`` extends the lease every ``ttl / 3`` seconds in a task that release and
  :meth:`PostgresLock.aclose` cancel.

Acquire + release = 2 round trips on pool connections. Tokens are per :class:`PostgresLease` object
(a random per-lock prefix + a counter), never per thread or task.

A TTL lock alone cannot protect a resource from a holder that paused past its TTL (GC, swap, network):
pass ``lease.fencing_token`` with every write and have the resource reject tokens lower than the highest
it has seen.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import random
import time

import asyncpg.exceptions as pgexc

from catga._lease import LeaseBase, observed_acquire
from catga.errors import BackendError, ConfigurationError, LockNotAcquiredError, LockNotOwnedError
from catga.postgres._base import PgStore
from catga.protocols import validate_identifier

__all__ = ("PostgresLease", "PostgresLock")

logger = logging.getLogger("catga.postgres.lock")

_MIN_SLEEP = 0.005
_MAX_SLEEP = 0.1
# Another transaction's conflicting write under SERIALIZABLE / REPEATABLE READ defaults: the key was
# contended, so "not acquired this time" (retried while ``wait`` lasts).
_CONTENDED = (pgexc.SerializationError, pgexc.DeadlockDetectedError)


def _ttl(ttl: float) -> float:
    if not (isinstance(ttl, int | float) and ttl > 0 and math.isfinite(ttl)):
        raise ConfigurationError(f"lock ttl must be a finite number of seconds > 0, got {ttl!r}")
    return float(ttl)


class PostgresLease(LeaseBase):
    """A held :class:`PostgresLock` key (see :class:`~catga.protocols.Lease`). Use ``async with`` to
    release on exit.

    Attributes:
        key: the lock key.
        token: this holder's random token.
        fencing_token: strictly increasing per key; pass it to downstream writes.
        ttl: the lease time in seconds (of the acquisition or the last extend).
        lost: True when auto-renewal found the lease taken or expired.
    """

    __slots__ = ("_lock", "fencing_token", "key", "token", "ttl")

    def __init__(self, lock: PostgresLock, key: str, token: str, fencing_token: int, ttl: float) -> None:
        self._lock = lock
        self.key = key
        self.token = token
        self.fencing_token = fencing_token
        self.ttl = ttl
        self._init_lease(lock._renewals)

    async def release(self) -> None:
        """Release the lock (the row stays, with its fencing counter).

        Raises:
            LockNotOwnedError: the lease expired, was taken over, or was already released.
            BackendUnavailableError, BackendTimeoutError, BackendError: the server failed.
        """
        await self._stop_renewal()
        if self._released:
            raise LockNotOwnedError(self.key)
        lock = self._lock
        if await lock._query("release", None, "fetchval", lock._release, self.key, self.token) is None:
            raise LockNotOwnedError(self.key)
        self._released = True

    async def extend(self, ttl: float) -> None:
        """Make the lease expire ``ttl`` seconds from now (server clock).

        Raises:
            LockNotOwnedError: the lease expired, was taken over, or was released.
            ConfigurationError: ``ttl`` is not a positive number of seconds.
            BackendUnavailableError, BackendTimeoutError, BackendError: the server failed.
        """
        seconds = _ttl(ttl)
        if self._released:
            raise LockNotOwnedError(self.key)
        lock = self._lock
        if await lock._query("extend", None, "fetchval", lock._extend, self.key, self.token, seconds) is None:
            raise LockNotOwnedError(self.key)
        self.ttl = seconds

    def __repr__(self) -> str:
        state = f"fencing_token={self.fencing_token}, released={self._released}"
        return f"PostgresLease(key={self.key!r}, {state})"


class PostgresLock(PgStore):
    """:class:`~catga.protocols.DistributedLock` on a PostgreSQL table (see the module docs).

    :meth:`aclose` stops auto-renewals (the leases then expire after their ttl) and closes the pool
    if :meth:`~catga.postgres._base.PgStore.connect` created it.

    Args:
        pool: an ``asyncpg`` pool (closed by :meth:`aclose` only if ``connect()`` created it).
        table: the table name, optionally ``schema.table``.
        owns_pool: close ``pool`` in :meth:`aclose`.
        timeout: seconds to wait for a pool connection and for each statement (``None``: no limit).

    Raises:
        ConfigurationError: the table name is not a plain SQL identifier, or the timeout is not
            positive.

    Example:
        >>> lock = await PostgresLock.connect("postgresql://127.0.0.1/app")  # doctest: +SKIP
        >>> async with await lock.acquire("orders.42", ttl=10, wait=2) as lease:  # doctest: +SKIP
        ...     await db.write(..., fencing_token=lease.fencing_token)
    """

    default_table = "catga_locks"

    def _build_sql(self) -> None:
        t = self.table
        self._acquire = (
            f"INSERT INTO {t} AS l (key, token, fencing, expires_at) "
            "VALUES ($1, $2, 1, now() + $3::float8 * interval '1 second') "
            "ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, fencing = l.fencing + 1, "
            "expires_at = EXCLUDED.expires_at "
            "WHERE l.expires_at IS NULL OR l.expires_at <= now() RETURNING fencing"
        )
        self._release = (
            f"UPDATE {t} SET token = NULL, expires_at = NULL "
            "WHERE key = $1 AND token = $2 AND expires_at > now() RETURNING fencing"
        )
        self._extend = (
            f"UPDATE {t} SET expires_at = now() + $3::float8 * interval '1 second' "
            "WHERE key = $1 AND token = $2 AND expires_at > now() RETURNING fencing"
        )
        self._token_prefix = os.urandom(8).hex() + "-"
        self._counter = itertools.count(1)
        self._renewals: set[asyncio.Task[None]] = set()

    def _ddl(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.table} (key text PRIMARY KEY, token text, "
            "fencing bigint NOT NULL, expires_at timestamptz)"
        ]

    @observed_acquire
    async def acquire(
        self, key: str, *, ttl: float = 30.0, wait: float = 0.0, auto_renew: bool = False
    ) -> PostgresLease:
        """Acquire ``key`` for ``ttl`` seconds, retrying for up to ``wait`` seconds (0 = try once).

        Raises:
            LockNotAcquiredError: still held by another holder when ``wait`` ran out.
            InvalidIdentifierError: ``key`` is malformed.
            ConfigurationError: ``ttl`` is not positive or ``wait`` is negative.
            BackendUnavailableError, BackendTimeoutError, BackendError: the server failed.
        """
        validate_identifier(key, "lock key")
        seconds = _ttl(ttl)
        if not wait >= 0:
            raise ConfigurationError(f"lock wait must be >= 0 seconds, got {wait!r}")
        token = f"{self._token_prefix}{next(self._counter)}"
        fencing = await self._try(key, token, seconds)
        if fencing is None:
            deadline = time.monotonic() + wait
            delay = _MIN_SLEEP
            while fencing is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LockNotAcquiredError(key, wait)
                await asyncio.sleep(min(remaining, delay * random.uniform(0.5, 1.0)))
                delay = min(delay * 2, _MAX_SLEEP)
                fencing = await self._try(key, token, seconds)
        lease = PostgresLease(self, key, token, int(fencing), seconds)
        if auto_renew:
            lease._start_renewal()
        return lease

    async def _try(self, key: str, token: str, seconds: float) -> int | None:
        """One acquisition attempt: the new fencing token, or None when the key is held."""
        try:
            fencing = await self._query("acquire", None, "fetchval", self._acquire, key, token, seconds)
        except BackendError as exc:
            if isinstance(exc.__cause__, _CONTENDED):
                return None
            raise
        return None if fencing is None else int(fencing)

    async def aclose(self) -> None:
        """Stop auto-renewals (their leases expire after their ttl), then close an owned pool.
        Idempotent."""
        tasks = list(self._renewals)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await super().aclose()
