"""Schedules in PostgreSQL: a table leased with ``FOR UPDATE SKIP LOCKED``.

Table (default name ``catga_schedules``; created like every catga table, see
:mod:`catga.postgres._base`)::

    id text PRIMARY KEY, due_at float8, kind text, type_name text, body bytea, headers jsonb,
    every float8, attempts int, last_error text, cron text, available_at float8

with an index on ``available_at``: when the schedule may be claimed — its due time, or the end of
its lease or retry delay (never before the due time).

* ``add``: ``INSERT ... ON CONFLICT (id) DO NOTHING`` (the first one wins).
* ``claim_due``: ``UPDATE ... SET available_at = now + lease WHERE id IN (SELECT ... WHERE
  available_at <= now ORDER BY available_at LIMIT n FOR UPDATE SKIP LOCKED) RETURNING``: concurrent
  schedulers skip each other's rows instead of waiting, and never claim a row whose lease runs.
* ``complete`` / ``retry``: one statement each, ``WHERE id = $1 AND due_at = $2`` (the claimed
  occurrence; a late or cancelled one changes nothing).

Times are the clients' unix time (the store's ``clock``). A ``claim_due`` that finds nothing reads
``min(available_at)`` and sleeps until then (at most ``wait`` seconds); an ``add`` on the same object
wakes it, rows written by other processes are seen at the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from catga.errors import ConfigurationError
from catga.postgres._base import DEFAULT_TIMEOUT, PgStore, deleted
from catga.protocols import Schedule, validate_identifier

__all__ = ("PostgresScheduleStore",)

_COLUMNS = "id, due_at, kind, type_name, body, headers, every, attempts, last_error, cron"


class PostgresScheduleStore(PgStore):
    """:class:`~catga.protocols.ScheduleStore` on a PostgreSQL table (see the module docs).

    Args:
        pool: an ``asyncpg`` pool (not closed by :meth:`aclose` unless this object created it with
            :meth:`connect`).
        table: the table name, optionally ``schema.table`` (default ``catga_schedules``).
        owns_pool: close ``pool`` in :meth:`aclose`.
        timeout: seconds to wait for a pool connection and for each statement (``None``: no limit).
        clock: the unix-time clock that decides what is due.

    Raises:
        ConfigurationError: the table name is not a plain SQL identifier, or the timeout is not
            positive.
    """

    default_table = "catga_schedules"

    def __init__(
        self,
        pool: Any,
        *,
        table: str | None = None,
        owns_pool: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(pool, table=table, owns_pool=owns_pool, timeout=timeout)
        self.clock = clock
        self._changed = asyncio.Event()
        t = self.table
        self._insert = (
            f"INSERT INTO {t} ({_COLUMNS}, available_at) "
            "VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, 0, NULL, $8, $2) "
            "ON CONFLICT (id) DO NOTHING"
        )
        self._claim = (
            f"UPDATE {t} SET available_at = $1 + $3 WHERE id IN ("
            f"SELECT id FROM {t} WHERE available_at <= $1 ORDER BY available_at LIMIT $2 "
            f"FOR UPDATE SKIP LOCKED) RETURNING {_COLUMNS}"
        )
        self._next = f"SELECT min(available_at) FROM {t}"
        self._delete = f"DELETE FROM {t} WHERE id = $1 AND due_at = $2"
        self._move = (
            f"UPDATE {t} SET due_at = $3, available_at = $3, attempts = 0, last_error = NULL "
            "WHERE id = $1 AND due_at = $2"
        )
        self._retry = (
            f"UPDATE {t} SET attempts = attempts + 1, last_error = $4, available_at = GREATEST($3, due_at) "
            "WHERE id = $1 AND due_at = $2"
        )
        self._cancel = f"DELETE FROM {t} WHERE id = $1"
        self._get = f"SELECT {_COLUMNS} FROM {t} WHERE id = $1"

    def _index(self) -> str:
        schema, _, _ = self.table.rpartition(".")
        name = f"{self.table.replace('.', '_')}_available"
        return f"{schema}.{name}" if schema else name

    def _ddl(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            "id text PRIMARY KEY, due_at float8 NOT NULL, kind text NOT NULL, type_name text NOT NULL, "
            "body bytea NOT NULL, headers jsonb NOT NULL DEFAULT '{}', every float8 NOT NULL DEFAULT 0, "
            "attempts integer NOT NULL DEFAULT 0, last_error text, cron text NOT NULL DEFAULT '', "
            "available_at float8 NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {self.table.replace('.', '_')}_available "
            f"ON {self.table} (available_at)",
        ]

    def _schema_objects(self) -> tuple[str, ...]:
        return (self.table, self._index())

    async def add(self, schedule: Schedule) -> bool:
        """Store ``schedule``; False (nothing changed) when its id is already stored.

        Raises:
            ConfigurationError: not a :class:`~catga.protocols.Schedule`.
            InvalidIdentifierError: an invalid id.
            BackendUnavailableError, BackendTimeoutError, BackendError: the server failed.
        """
        if not isinstance(schedule, Schedule):
            raise ConfigurationError(f"add() takes a Schedule, got {schedule!r}")
        validate_identifier(schedule.id, "schedule id")
        s = schedule
        status = await self._execute(
            "add", None, self._insert, s.id, float(s.due_at), s.kind, s.type_name, bytes(s.body),
            json.dumps(s.headers), float(s.every), s.cron,
        )  # fmt: skip
        self._changed.set()
        return deleted(status) == 1

    async def claim_due(self, limit: int = 100, lease: float = 30.0, wait: float = 0.0) -> list[Schedule]:
        """Lease up to ``limit`` due schedules for ``lease`` s; wait up to ``wait`` s when none is due."""
        if limit <= 0:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            self._changed.clear()
            records = await self._query("claim_due", None, "fetch", self._claim, self.clock(), limit, lease)
            if records:
                return sorted((_schedule(r) for r in records), key=lambda s: s.due_at)
            left = deadline - loop.time()
            if left <= 0:
                return []
            first = await self._query("claim_due", None, "fetchval", self._next)
            if first is not None:
                left = min(left, max(float(first) - self.clock(), 0.001))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._changed.wait()

    async def complete(self, schedule: Schedule, next_due: float | None = None) -> None:
        """Delete the schedule, or move it to ``next_due``; a no-op for another occurrence."""
        if next_due is None:
            await self._execute("complete", None, self._delete, schedule.id, float(schedule.due_at))
        else:
            await self._execute(
                "complete", None, self._move, schedule.id, float(schedule.due_at), float(next_due)
            )
            self._changed.set()

    async def retry(self, schedule: Schedule, retry_at: float, error: str) -> None:
        """Count a failed delivery; claimable again at ``retry_at``. A no-op for another occurrence."""
        await self._execute(
            "retry", None, self._retry, schedule.id, float(schedule.due_at), float(retry_at), error
        )
        self._changed.set()

    async def cancel(self, id: str) -> bool:
        """Delete the schedule; False when there is none."""
        return deleted(await self._execute("cancel", None, self._cancel, id)) > 0

    async def get(self, id: str) -> Schedule | None:
        """The schedule as stored, or None."""
        record = await self._query("get", None, "fetchrow", self._get, id)
        return None if record is None else _schedule(record)


def _schedule(r: Any) -> Schedule:
    return Schedule(
        id=r["id"],
        due_at=r["due_at"],
        kind=r["kind"],
        type_name=r["type_name"],
        body=bytes(r["body"]),
        headers=json.loads(r["headers"]),
        every=r["every"],
        attempts=r["attempts"],
        last_error=r["last_error"],
        cron=r["cron"],
    )
