"""Idempotency / inbox records in PostgreSQL.

Table (default ``catga_idempotency``; created by ``connect()``, ``ensure_schema()``, ``App.start`` or
the first call that uses the pool, see :mod:`catga.postgres._base`)::

    key text PRIMARY KEY, state smallint (0 claimed, 1 completed), expires_at float8, result bytea

* ``claim``: ``INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE expires_at <= now RETURNING``: one
  atomic statement takes a free or expired key, so of N concurrent claims exactly one wins; otherwise
  the live row says IN_PROGRESS or COMPLETED (with its result).
* ``complete``: an upsert to state 1 with ``expires_at = now + ttl``; ``release``: deletes a claim
  (never a completed record).

Like the outbox, ``claim``, ``complete`` and ``release`` take an optional ``connection`` (and then
use no other): a handler that writes its effects in a transaction can mark the message done in the
same transaction, so the effects and the "done" record commit together (the pipeline's later
``complete`` is then an idempotent repeat).

Expired rows are not deleted by reads; :meth:`PostgresIdempotencyStore.purge_expired` removes them
(run it now and then). Times are the clients' unix time.
"""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from catga.postgres._base import PgStore, deleted
from catga.postgres._tx import joined_connection
from catga.protocols import Claim, ClaimStatus, validate_identifier

if TYPE_CHECKING:
    from catga.postgres.unit_of_work import PostgresUnitOfWork

__all__ = ("PostgresIdempotencyStore", "PostgresInboxStore")

_CLAIMED = Claim(ClaimStatus.CLAIMED)
_IN_PROGRESS = Claim(ClaimStatus.IN_PROGRESS)


class PostgresIdempotencyStore(PgStore):
    """:class:`~catga.protocols.IdempotencyStore` on a PostgreSQL table (see the module docs).

    Args:
        pool: an ``asyncpg`` pool (closed by :meth:`aclose` only if :meth:`connect` created it).
        table: the table name, optionally ``schema.table``.
        owns_pool: close ``pool`` in :meth:`aclose`.
        timeout: seconds to wait for a pool connection and for each statement (``None``: no limit).

    Raises:
        ConfigurationError: the table name is not a plain SQL identifier, or the timeout is not
            positive.
    """

    default_table = "catga_idempotency"

    def _build_sql(self) -> None:
        t = self.table
        self._claim = (
            f"INSERT INTO {t} (key, state, expires_at, result) VALUES ($1, 0, $2::float8 + $3::float8, NULL) "
            f"ON CONFLICT (key) DO UPDATE SET state = 0, expires_at = EXCLUDED.expires_at, result = NULL "
            f"WHERE {t}.expires_at <= $2::float8 RETURNING key"
        )
        self._read = f"SELECT state, expires_at, result FROM {t} WHERE key = $1"
        self._complete = (
            f"INSERT INTO {t} (key, state, expires_at, result) VALUES ($1, 1, $2, $3) "
            "ON CONFLICT (key) DO UPDATE SET state = 1, expires_at = EXCLUDED.expires_at, "
            "result = EXCLUDED.result"
        )
        self._release = f"DELETE FROM {t} WHERE key = $1 AND state = 0"
        self._purge = f"DELETE FROM {t} WHERE expires_at <= $1"

    def _ddl(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.table} (key text PRIMARY KEY, "
            "state smallint NOT NULL, expires_at float8 NOT NULL, result bytea)"
        ]

    async def claim(self, key: str, lock_ttl: float = 30.0, *, connection: Any = None) -> Claim:
        """Claim ``key`` atomically: CLAIMED, IN_PROGRESS, or COMPLETED with the stored result.

        Args:
            key: the idempotency key.
            lock_ttl: seconds the claim lives unless completed or released.
            connection: an ``asyncpg`` connection (in your transaction, if you like) to run on; no
                other pool connection is taken.

        Raises:
            InvalidIdentifierError: the key is malformed.
            ConfigurationError: ``connection`` is in a transaction and the table does not exist yet
                (call :meth:`ensure_schema` at start-up).
            BackendUnavailableError, BackendTimeoutError, BackendError: the server failed.
        """
        validate_identifier(key, "idempotency key")
        if connection is None:
            connection = joined_connection(self.pool)
        if connection is not None:
            if not self._ready:
                await self._ready_on(connection, "claim")
            with self._errors("claim"):
                return await self._claim_on(connection, key, lock_ttl)
        if not self._ready:
            await self.ensure_schema()
        with self._errors("claim"):
            async with self.pool.acquire(timeout=self.timeout) as conn:
                return await self._claim_on(conn, key, lock_ttl)

    async def _claim_on(self, db: Any, key: str, lock_ttl: float) -> Claim:
        timeout = self.timeout
        while True:
            now = time.time()
            if await db.fetchval(self._claim, key, now, lock_ttl, timeout=timeout) is not None:
                return _CLAIMED
            row = await db.fetchrow(self._read, key, timeout=timeout)
            if row is None or row["expires_at"] <= now:  # released or expired meanwhile: try again
                continue
            if row["state"] == 1:
                return Claim(ClaimStatus.COMPLETED, bytes(row["result"] or b""))
            return _IN_PROGRESS

    async def complete(
        self, key: str, result: bytes = b"", ttl: float = 86400.0, *, connection: Any = None
    ) -> None:
        """Store ``result`` for ``key`` for ``ttl`` seconds (in ``connection``'s transaction if given).

        Raises:
            InvalidIdentifierError: the key is malformed.
            ConfigurationError: as for :meth:`claim`.
            BackendUnavailableError, BackendTimeoutError, BackendError: the server failed.
        """
        validate_identifier(key, "idempotency key")
        await self._execute("complete", connection, self._complete, key, time.time() + ttl, bytes(result))

    async def release(self, key: str, *, connection: Any = None) -> None:
        """Drop an unfinished claim of ``key``; a completed record is kept.

        Raises:
            InvalidIdentifierError: the key is malformed.
            ConfigurationError: as for :meth:`claim`.
            BackendUnavailableError, BackendTimeoutError, BackendError: the server failed.
        """
        validate_identifier(key, "idempotency key")
        await self._execute("release", connection, self._release, key)

    async def purge_expired(self) -> int:
        """Delete expired claims and records; return how many."""
        return deleted(await self._execute("purge_expired", None, self._purge, time.time()))


class PostgresInboxStore(PostgresIdempotencyStore):
    """:class:`~catga.protocols.InboxStore` on PostgreSQL: the same records, default table ``catga_inbox``.

    A transport given this inbox (``NatsTransport(..., inbox=...)``, ``App(inbox=...)``) runs each
    ``EXACTLY_ONCE`` delivery in one transaction (:meth:`transaction`): the claim, everything the
    handler writes through catga's PostgreSQL stores on the same pool (events, outbox rows, your own
    SQL on :func:`~catga.postgres.current_connection`), and the "done" record commit together. The
    record's key is ``inbox.<consumer group>.<message id>``.
    """

    default_table = "catga_inbox"

    def transaction(self) -> AbstractAsyncContextManager[Any]:
        """A :class:`~catga.postgres.PostgresUnitOfWork` transaction on this store's pool."""
        from catga.postgres.unit_of_work import PostgresUnitOfWork

        uow = self._unit_of_work
        if uow is None:
            uow = self._unit_of_work = PostgresUnitOfWork(self.pool, timeout=self.timeout)
        return uow()

    _unit_of_work: PostgresUnitOfWork | None = None
