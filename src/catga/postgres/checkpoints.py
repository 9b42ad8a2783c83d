"""Projection checkpoints in a PostgreSQL table, writable inside your transaction.

Table (default ``catga_checkpoints``; created by ``connect()``, ``ensure_schema()``, ``App.start`` or the
first call, see :mod:`catga.postgres._base`)::

    name text PRIMARY KEY, position bigint NOT NULL, fencing bigint (NULL until a fenced write)

A fenced ``save`` and ``claim`` are one ``INSERT ... ON CONFLICT (name) DO UPDATE ... WHERE fencing IS
NULL OR fencing <= new`` each: the check and the write are atomic (the conflicting row is locked and the
condition re-read). Give ``connection=`` to write the checkpoint in the transaction that updates your
read model, so the model and its checkpoint commit together -- and a stale owner's refused write rolls
its model changes back with it (:class:`~catga.eventsourcing.Projection.commit`).
"""

from __future__ import annotations

from typing import Any

from catga.errors import StaleFencingTokenError
from catga.eventsourcing.checkpoints import check_position
from catga.postgres._base import PgStore
from catga.protocols import validate_identifier

__all__ = ("PostgresCheckpointStore",)

_KIND = "projection name"


class PostgresCheckpointStore(PgStore):
    """:class:`~catga.eventsourcing.CheckpointStore` on a PostgreSQL table (see the module docs).

    Args:
        pool: an ``asyncpg`` pool (closed by :meth:`aclose` only if :meth:`connect` created it).
        table: the table name, optionally ``schema.table``.
        owns_pool: close ``pool`` in :meth:`aclose`.
        timeout: seconds to wait for a pool connection and for each statement (``None``: no limit).

    Raises:
        ConfigurationError: the table name is not a plain SQL identifier, or the timeout is not
            positive.
    """

    default_table = "catga_checkpoints"

    def _build_sql(self) -> None:
        t = self.table
        self._get = f"SELECT position FROM {t} WHERE name = $1"
        self._fencing = f"SELECT fencing FROM {t} WHERE name = $1"
        self._save = (
            f"INSERT INTO {t} AS c (name, position) VALUES ($1, $2) "
            "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position"
        )
        self._save_fenced = (
            f"INSERT INTO {t} AS c (name, position, fencing) VALUES ($1, $2, $3) "
            "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, fencing = EXCLUDED.fencing "
            "WHERE c.fencing IS NULL OR c.fencing <= EXCLUDED.fencing RETURNING position"
        )
        self._claim = (
            f"INSERT INTO {t} AS c (name, position, fencing) VALUES ($1, 0, $2) "
            "ON CONFLICT (name) DO UPDATE SET fencing = EXCLUDED.fencing "
            "WHERE c.fencing IS NULL OR c.fencing <= EXCLUDED.fencing RETURNING position"
        )

    def _ddl(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.table} (name text PRIMARY KEY, position bigint NOT NULL, "
            "fencing bigint)"
        ]

    async def get(self, name: str, *, connection: Any = None) -> int:
        """The last saved position of ``name``, 0 when none.

        Raises:
            InvalidIdentifierError: ``name`` is invalid (before any I/O).
        """
        validate_identifier(name, _KIND)
        value = await self._query("read checkpoint", connection, "fetchval", self._get, name)
        return 0 if value is None else int(value)

    async def save(
        self, name: str, position: int, *, fencing_token: int | None = None, connection: Any = None
    ) -> None:
        """Record ``position`` for ``name``; with ``fencing_token``, only if no higher token is stored.

        Args:
            name: the projection name.
            position: the global position of the last handled event.
            fencing_token: the owner's lease token (see the module docs); None skips the check.
            connection: run on this asyncpg connection (inside your transaction) and no other.

        Raises:
            StaleFencingTokenError: a higher fencing token is stored; nothing was written (roll your
                transaction back: the error leaving ``async with conn.transaction()`` does).
            InvalidIdentifierError: ``name`` is invalid; ConfigurationError: bad ``position``.
        """
        validate_identifier(name, _KIND)
        check_position(position)
        if fencing_token is None:
            await self._execute("save checkpoint", connection, self._save, name, position)
            return
        token = int(fencing_token)
        done = await self._query(
            "save checkpoint", connection, "fetchval", self._save_fenced, name, position, token
        )
        if done is None:
            await self._refuse(name, token, connection)

    async def claim(self, name: str, fencing_token: int, *, connection: Any = None) -> int:
        """Raise the stored token of ``name`` to ``fencing_token`` and return its position, atomically.

        Raises:
            StaleFencingTokenError: a higher fencing token is stored.
            InvalidIdentifierError: ``name`` is invalid (before any I/O).
        """
        validate_identifier(name, _KIND)
        token = int(fencing_token)
        position = await self._query("claim checkpoint", connection, "fetchval", self._claim, name, token)
        if position is None:
            await self._refuse(name, token, connection)
        return int(position)

    async def _refuse(self, name: str, token: int, connection: Any) -> None:
        current = await self._query("read checkpoint", connection, "fetchval", self._fencing, name)
        raise StaleFencingTokenError(name, token, int(current or 0))
