"""An outbox in PostgreSQL, written in the same transaction as your data.

This is the outbox that closes the whole gap: the event row commits or rolls back *with* the state
change it announces, so no crash can leave one without the other. Give :meth:`PostgresOutboxStore.add`
the connection of your transaction::

    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE orders SET status = 'paid' WHERE id = $1", order_id)
        await outbox.add([message], connection=conn)          # same transaction
    # the OutboxRelay publishes it after the commit (and never, if it rolled back)

Table (default name ``catga_outbox``; created by ``connect()``, ``ensure_schema()``, ``App.start`` or
the first call that uses the pool — never on a second connection behind a ``connection=`` call, see
:mod:`catga.postgres._base`)::

    id text PRIMARY KEY, destination text, type_name text, body bytea, headers jsonb,
    created_at float8, attempts int, next_attempt_at float8, last_error text, status smallint,
    lease_until float8

with an index on ``(status, created_at)``. Times are the clients' unix time (like the Redis outbox).

* ``add``: one ``INSERT ... ON CONFLICT (id) DO NOTHING`` per message, in the caller's transaction or in
  a transaction of its own (all or none); a duplicate id is ignored, the first one wins.
* ``fetch_pending``: ``UPDATE ... SET lease_until = now + lease WHERE id IN (SELECT ... FOR UPDATE SKIP
  LOCKED) RETURNING``: concurrent relays skip each other's rows instead of waiting, and never lease the
  same message twice while a lease runs.
* ``mark_published`` / ``mark_failed`` / ``purge_published``: single statements.

Uses ``asyncpg`` (``pip install "catga[postgres]"``). With SQLAlchemy's asyncpg dialect, the raw
connection of a session's transaction is ``(await session.connection()).get_raw_connection()``'s
``driver_connection``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from catga.errors import ConfigurationError
from catga.postgres._base import PgStore, deleted
from catga.postgres._tx import call_after_commit, joined_connection
from catga.protocols import OutboxMessage, OutboxStatus

__all__ = ("PostgresOutboxStore",)

_COLUMNS = (
    "id, destination, type_name, body, headers, created_at, attempts, next_attempt_at, last_error, status"
)


class PostgresOutboxStore(PgStore):
    """:class:`~catga.protocols.OutboxStore` on a PostgreSQL table (see the module docs).

    Args:
        pool: an ``asyncpg`` pool (not closed by :meth:`aclose` unless this object created it with
            :meth:`connect`).
        table: the table name, optionally ``schema.table`` (default ``catga_outbox``).
        owns_pool: close ``pool`` in :meth:`aclose`.
        timeout: seconds to wait for a pool connection and for each statement (``None``: no limit).

    Raises:
        ConfigurationError: the table name is not a plain SQL identifier, or the timeout is not
            positive.
    """

    default_table = "catga_outbox"

    def _build_sql(self) -> None:
        t = self.table
        self._insert = (
            f"INSERT INTO {t} ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10) "
            "ON CONFLICT (id) DO NOTHING"
        )
        self._fetch = (
            f"UPDATE {t} SET lease_until = $1 + $3 WHERE id IN ("
            f"SELECT id FROM {t} WHERE status = 0 AND next_attempt_at <= $1 AND lease_until <= $1 "
            f"ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING {_COLUMNS}"
        )
        self._published = f"UPDATE {t} SET status = 1, lease_until = 0 WHERE id = ANY($1::text[])"
        self._failed = (
            f"UPDATE {t} SET attempts = attempts + 1, last_error = $2, lease_until = 0, "
            "status = CASE WHEN $3::float8 IS NULL THEN 2 ELSE status END, "
            "next_attempt_at = COALESCE($3::float8, next_attempt_at) WHERE id = $1"
        )
        self._get = f"SELECT {_COLUMNS} FROM {t} WHERE id = $1"
        self._count = f"SELECT count(*) FROM {t} WHERE status = $1"
        self._purge = f"DELETE FROM {t} WHERE status = 1 AND created_at < $1"

    def _index(self) -> str:
        """The pending-rows index, named after the table, in the table's schema."""
        schema, _, _ = self.table.rpartition(".")
        name = f"{self.table.replace('.', '_')}_pending"
        return f"{schema}.{name}" if schema else name

    def _ddl(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            "id text PRIMARY KEY, destination text NOT NULL, type_name text NOT NULL, "
            "body bytea NOT NULL, headers jsonb NOT NULL DEFAULT '{}', "
            "created_at float8 NOT NULL, attempts integer NOT NULL DEFAULT 0, "
            "next_attempt_at float8 NOT NULL DEFAULT 0, last_error text, "
            "status smallint NOT NULL DEFAULT 0, lease_until float8 NOT NULL DEFAULT 0)",
            f"CREATE INDEX IF NOT EXISTS {self.table.replace('.', '_')}_pending "
            f"ON {self.table} (status, created_at)",
        ]

    def _schema_objects(self) -> tuple[str, ...]:
        return (self.table, self._index())

    async def add(self, messages: Sequence[OutboxMessage], *, connection: Any = None) -> None:
        """Store ``messages``; an id already stored is ignored (the first one wins).

        Args:
            messages: the messages.
            connection: an ``asyncpg`` connection inside *your* transaction: the rows commit or roll
                back with it, and no other pool connection is taken. Without one, the messages are
                stored in a transaction of their own.

        Raises:
            ConfigurationError: an item is not an :class:`~catga.protocols.OutboxMessage` or has an
                empty id (nothing is stored); or ``connection`` is in a transaction and the table does
                not exist yet (call :meth:`ensure_schema` at start-up).
            BackendUnavailableError, BackendTimeoutError, BackendError: the server failed (nothing
                is stored).
        """
        rows = []
        for m in messages:
            if not isinstance(m, OutboxMessage) or not m.id:
                raise ConfigurationError(
                    f"outbox add() takes OutboxMessage values with a non-empty id, got {m!r}"
                )
            rows.append(
                (m.id, m.destination, m.type_name, bytes(m.body), json.dumps(m.headers), m.created_at,
                 m.attempts, m.next_attempt_at, m.last_error, int(m.status))
            )  # fmt: skip
        if not rows:
            return
        if connection is None:
            connection = joined_connection(self.pool)
        if connection is not None:
            await self._query("add", connection, "executemany", self._insert, rows)
            return
        if not self._ready:
            await self.ensure_schema()
        with self._errors("add"):
            async with self.pool.acquire(timeout=self.timeout) as conn, conn.transaction():
                await conn.executemany(self._insert, rows, timeout=self.timeout)

    def notify_when_visible(self, wake: Callable[[], object]) -> None:
        """Call ``wake()`` once rows just added are visible to a relay: after the commit of the
        :class:`~catga.postgres.PostgresUnitOfWork` they joined (never if it rolls back), else now.

        The app's export calls it with the relay's ``notify`` after each ``add``: woken before the
        commit, the relay would find nothing and sleep for its ``poll_interval``.
        """
        call_after_commit(self.pool, wake)

    async def fetch_pending(self, limit: int = 100, lease: float = 30.0) -> list[OutboxMessage]:
        """Lease up to ``limit`` due PENDING messages, oldest ``created_at`` first."""
        if limit <= 0:
            return []
        records = await self._query("fetch_pending", None, "fetch", self._fetch, time.time(), limit, lease)
        return sorted((_message(r) for r in records), key=lambda m: m.created_at)

    async def mark_published(self, ids: Sequence[str]) -> None:
        """Mark messages PUBLISHED. Idempotent; unknown ids are ignored."""
        if ids:
            await self._execute("mark_published", None, self._published, list(ids))

    async def mark_failed(self, id: str, error: str, retry_at: float | None) -> None:
        """Record a failed attempt and end the lease; ``retry_at=None`` makes the message DEAD."""
        await self._execute("mark_failed", None, self._failed, id, error, retry_at)

    async def get(self, id: str) -> OutboxMessage | None:
        """The message with this id in whatever state, or None."""
        record = await self._query("get", None, "fetchrow", self._get, id)
        return None if record is None else _message(record)

    async def count(self, status: OutboxStatus = OutboxStatus.PENDING) -> int:
        """How many messages are in ``status``."""
        return int(await self._query("count", None, "fetchval", self._count, int(status)))

    async def purge_published(self, older_than: float) -> int:
        """Delete PUBLISHED messages created before the unix time ``older_than``; return how many."""
        return deleted(await self._execute("purge_published", None, self._purge, older_than))


def _message(r: Any) -> OutboxMessage:
    return OutboxMessage(
        id=r["id"],
        destination=r["destination"],
        type_name=r["type_name"],
        body=bytes(r["body"]),
        headers=json.loads(r["headers"]),
        created_at=r["created_at"],
        attempts=r["attempts"],
        next_attempt_at=r["next_attempt_at"],
        last_error=r["last_error"],
        status=OutboxStatus(r["status"]),
    )
