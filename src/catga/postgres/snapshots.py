"""Aggregate snapshots in a PostgreSQL table.

Table (default ``catga_snapshots``; created by ``connect()``, ``ensure_schema()``, ``App.start`` or the
first call, see :mod:`catga.postgres._base`)::

    stream_id text PRIMARY KEY, version bigint, type_name text, schema_version integer,
    taken_at float8, state text (the state's JSON, readable in psql)

``save`` is one ``INSERT ... ON CONFLICT (stream_id) DO UPDATE ... WHERE stored version <= new``: racing
writers keep the newest snapshot.
"""

from __future__ import annotations

from typing import Any

from catga.eventsourcing.snapshots import Snapshot, encode_snapshot
from catga.postgres._base import PgStore, deleted
from catga.protocols import validate_identifier

__all__ = ("PostgresSnapshotStore",)


class PostgresSnapshotStore(PgStore):
    """:class:`~catga.eventsourcing.SnapshotStore` on a PostgreSQL table (see the module docs).

    Args:
        pool: an ``asyncpg`` pool (closed by :meth:`aclose` only if :meth:`connect` created it).
        table: the table name, optionally ``schema.table``.
        owns_pool: close ``pool`` in :meth:`aclose`.
        timeout: seconds to wait for a pool connection and for each statement (``None``: no limit).

    Raises:
        ConfigurationError: the table name is not a plain SQL identifier, or the timeout is not
            positive.
    """

    default_table = "catga_snapshots"

    def _build_sql(self) -> None:
        t = self.table
        self._get = (
            f"SELECT version, type_name, schema_version, taken_at, state FROM {t} WHERE stream_id = $1"
        )
        self._save = (
            f"INSERT INTO {t} AS s (stream_id, version, type_name, schema_version, taken_at, state) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (stream_id) DO UPDATE SET "
            "version = EXCLUDED.version, type_name = EXCLUDED.type_name, "
            "schema_version = EXCLUDED.schema_version, taken_at = EXCLUDED.taken_at, state = EXCLUDED.state "
            "WHERE s.version <= EXCLUDED.version"
        )
        self._delete = f"DELETE FROM {t} WHERE stream_id = $1"

    def _ddl(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.table} (stream_id text PRIMARY KEY, version bigint NOT NULL, "
            "type_name text NOT NULL, schema_version integer NOT NULL, taken_at float8 NOT NULL, "
            "state text NOT NULL)"
        ]

    async def get(self, stream_id: str, *, connection: Any = None) -> Snapshot | None:
        """The latest snapshot of ``stream_id``, or None.

        Raises:
            InvalidIdentifierError: ``stream_id`` is invalid (before any I/O).
        """
        validate_identifier(stream_id)
        row = await self._query("read snapshot", connection, "fetchrow", self._get, stream_id)
        if row is None:
            return None
        return Snapshot(
            stream_id=stream_id,
            version=int(row["version"]),
            type_name=row["type_name"],
            state=row["state"].encode(),
            taken_at=float(row["taken_at"]),
            schema_version=int(row["schema_version"]),
        )

    async def save(self, snapshot: Snapshot, *, connection: Any = None) -> None:
        """Store ``snapshot`` unless a newer one is stored (one atomic statement).

        Args:
            snapshot: the snapshot.
            connection: run on this asyncpg connection (inside your transaction) and no other.

        Raises:
            InvalidIdentifierError: the stream id is invalid (before any I/O).
            SerializationError: the snapshot's state is not JSON.
        """
        validate_identifier(snapshot.stream_id)
        encode_snapshot(snapshot)  # the same check as every store: the state must be JSON
        await self._execute(
            "save snapshot",
            connection,
            self._save,
            snapshot.stream_id,
            snapshot.version,
            snapshot.type_name,
            snapshot.schema_version,
            snapshot.taken_at,
            snapshot.state.decode(),
        )

    async def delete(self, stream_id: str, *, connection: Any = None) -> bool:
        """Drop the snapshot of ``stream_id``; return whether there was one.

        Raises:
            InvalidIdentifierError: ``stream_id`` is invalid (before any I/O).
        """
        validate_identifier(stream_id)
        return deleted(await self._execute("delete snapshot", connection, self._delete, stream_id)) > 0
