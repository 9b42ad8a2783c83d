"""Workflow instances and histories in PostgreSQL: two tables, fenced by the instance row.

Tables (default ``catga_workflows`` and ``catga_workflows_history``; created like every catga
table, see :mod:`catga.postgres._base`)::

    catga_workflows: id text PRIMARY KEY, name text, version int, input bytea, status text,
        result bytea, error text, created_at float8, updated_at float8, wake_at float8,
        cancel_requested bool, token bigint, owner text, lease_until float8
    catga_workflows_history: id text, seq int, kind text, name text, ok bool, value bytea,
        at float8, error_type text, PRIMARY KEY (id, seq)

* ``acquire``: one ``UPDATE ... SET token = token + 1 ... WHERE`` the lease is free, ours or ended,
  ``RETURNING token``: the row lock orders concurrent acquirers, each gets a higher token.
* ``record``: ``INSERT ... SELECT ... FROM`` the instance row ``WHERE token = $2 ... FOR SHARE``
  ``ON CONFLICT (id, seq) DO NOTHING``: the share lock keeps a new owner's ``acquire`` out until the
  insert commits, so a write under a stale token never lands; the primary key is the optimistic
  concurrency by sequence number.
* ``update``: ``UPDATE ... WHERE id = $1 AND token = $2 AND owner <> ''``.
* ``offer``: the insert of ``record`` with the instance row selected by ``status`` (not finished)
  instead of by token, ``FOR SHARE`` too (a runner's ``update`` to a final status waits for it).
* ``waiting``: a partial index on ``(wait_for, created_at, id) WHERE status IN ('running', 'sleeping')``.

Times (leases, wake times, ``due``) are the **server's** clock (``clock_timestamp()``), so replicas
whose clocks disagree still agree on when a lease ends. The engine computes wake times with its own
clock and re-checks them when woken, so a sleep never ends early by the engine's clock.
"""

from __future__ import annotations

from typing import Any

from catga.errors import ConcurrencyError, ConfigurationError, StaleFencingTokenError
from catga.postgres._base import PgStore, deleted
from catga.protocols import validate_identifier
from catga.workflows.store import FINISHED, STATUSES, HistoryEntry, WorkflowInstance

__all__ = ("PostgresWorkflowStore",)

_NOW = "extract(epoch from clock_timestamp())::float8"
_COLUMNS = (
    "id, name, version, input, status, result, error, created_at, updated_at, wake_at, "
    "cancel_requested, token, owner, lease_until, wait_for, wait_spec"
)
_ENTRY = "seq, kind, name, ok, value, at, error_type"
_DONE = ", ".join(f"'{s}'" for s in sorted(FINISHED))
#: The instances ``waiting`` lists (and its partial index covers).
_WAITING = "status IN ('running', 'sleeping')"
#: When ``update`` keeps the given ``wait_for``/``wait_spec`` ($3 is the new status).
_KEEPS_WAIT = "($3 = 'running' OR ($3 = 'sleeping' AND NOT cancel_requested))"


class PostgresWorkflowStore(PgStore):
    """:class:`~catga.workflows.WorkflowStore` on two PostgreSQL tables (see the module docs).

    Args:
        pool: an ``asyncpg`` pool (not closed by :meth:`aclose` unless :meth:`connect` created it).
        table: the instances table, optionally ``schema.table`` (default ``catga_workflows``); the
            history is ``<table>_history``.
        owns_pool: close ``pool`` in :meth:`aclose`.
        timeout: seconds to wait for a pool connection and for each statement (``None``: no limit).

    Raises:
        ConfigurationError: the table name is not a plain SQL identifier (of at most 55 characters),
            or the timeout is not positive.
    """

    default_table = "catga_workflows"

    def _build_sql(self) -> None:
        if len(self.table.rpartition(".")[2]) > 55:
            raise ConfigurationError(f"table {self.table!r}: at most 55 characters (+ '_history')")
        t = self.table
        h = self.history_table = f"{t}_history"
        self._create = (
            f"INSERT INTO {t} (id, name, version, input, status, created_at, updated_at) "
            f"VALUES ($1, $2, $3, $4, 'pending', COALESCE(NULLIF($5, 0), {_NOW}), {_NOW}) "
            "ON CONFLICT (id) DO NOTHING"
        )
        self._get = f"SELECT {_COLUMNS} FROM {t} WHERE id = $1"
        self._list = (
            f"SELECT {_COLUMNS} FROM {t} WHERE ($1::text IS NULL OR status = $1) "
            "ORDER BY created_at, id LIMIT $2"
        )
        self._history = f"SELECT {_ENTRY} FROM {h} WHERE id = $1 ORDER BY seq"
        self._acquire = (
            f"UPDATE {t} SET token = token + 1, owner = $2, lease_until = {_NOW} + $3 "
            f"WHERE id = $1 AND status NOT IN ({_DONE}) "
            f"AND (owner = '' OR owner = $2 OR lease_until <= {_NOW}) RETURNING token"
        )
        self._renew = f"UPDATE {t} SET lease_until = {_NOW} + $3 WHERE id = $1 AND token = $2 AND owner <> ''"
        self._release = f"UPDATE {t} SET owner = '', lease_until = 0 WHERE id = $1 AND token = $2"
        self._record = (
            f"INSERT INTO {h} (id, {_ENTRY}) "
            f"SELECT w.id, $3, $4, $5, $6, $7, {_NOW}, $8 FROM "
            f"(SELECT id FROM {t} WHERE id = $1 AND token = $2 AND owner <> '' FOR SHARE) w "
            "ON CONFLICT (id, seq) DO NOTHING RETURNING seq"
        )
        self._token = f"SELECT token, owner FROM {t} WHERE id = $1"
        self._update = (
            f"UPDATE {t} SET "
            "status = CASE WHEN $3 = 'sleeping' AND cancel_requested THEN 'pending' ELSE $3 END, "
            "wake_at = CASE WHEN $3 = 'sleeping' AND cancel_requested THEN 0::float8 ELSE $6::float8 END, "
            f"wait_for = CASE WHEN {_KEEPS_WAIT} THEN $7 ELSE '' END, "
            f"wait_spec = CASE WHEN {_KEEPS_WAIT} THEN $8::bytea ELSE ''::bytea END, "
            f"result = $4, error = $5, updated_at = {_NOW} "
            "WHERE id = $1 AND token = $2 AND owner <> ''"
        )
        self._cancel = (
            f"UPDATE {t} SET cancel_requested = true, wake_at = 0, updated_at = {_NOW}, wait_for = '', "
            "wait_spec = ''::bytea, "
            "status = CASE WHEN status = 'sleeping' THEN 'pending' ELSE status END "
            f"WHERE id = $1 AND status NOT IN ({_DONE})"
        )
        self._waiting = (
            f"SELECT {_COLUMNS} FROM {t} WHERE wait_for = $1 AND {_WAITING} ORDER BY created_at, id LIMIT $2"
        )
        self._offer = (
            f"INSERT INTO {h} (id, {_ENTRY}) "
            f"SELECT w.id, $2, $3, $4, $5, $6, {_NOW}, $7 FROM "
            f"(SELECT id FROM {t} WHERE id = $1 AND status NOT IN ({_DONE}) FOR SHARE) w "
            "ON CONFLICT (id, seq) DO NOTHING RETURNING seq"
        )
        self._due = (
            f"SELECT id FROM {t} WHERE status NOT IN ({_DONE}) "
            f"AND NOT (owner <> '' AND lease_until > {_NOW}) "
            f"AND (status <> 'sleeping' OR wake_at <= {_NOW}) ORDER BY created_at, id LIMIT $1"
        )

    def _active_index(self) -> str:
        schema, _, _ = self.table.rpartition(".")
        name = f"{self.table.replace('.', '_')}_active"
        return f"{schema}.{name}" if schema else name

    def _ddl(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            "id text PRIMARY KEY, name text NOT NULL, version integer NOT NULL, input bytea NOT NULL, "
            "status text NOT NULL, result bytea NOT NULL DEFAULT '', error text NOT NULL DEFAULT '', "
            "created_at float8 NOT NULL, updated_at float8 NOT NULL, wake_at float8 NOT NULL DEFAULT 0, "
            "cancel_requested boolean NOT NULL DEFAULT false, token bigint NOT NULL DEFAULT 0, "
            "owner text NOT NULL DEFAULT '', lease_until float8 NOT NULL DEFAULT 0, "
            "wait_for text NOT NULL DEFAULT '', wait_spec bytea NOT NULL DEFAULT '')",
            f"CREATE INDEX IF NOT EXISTS {self.table.replace('.', '_')}_waits "
            f"ON {self.table} (wait_for, created_at, id) WHERE {_WAITING}",
            f"CREATE INDEX IF NOT EXISTS {self.table.replace('.', '_')}_active "
            f"ON {self.table} (created_at, id) WHERE status NOT IN ({_DONE})",
            f"CREATE TABLE IF NOT EXISTS {self.history_table} ("
            "id text NOT NULL, seq integer NOT NULL, kind text NOT NULL, name text NOT NULL, "
            "ok boolean NOT NULL, value bytea NOT NULL, at float8 NOT NULL, "
            "error_type text NOT NULL DEFAULT '', PRIMARY KEY (id, seq))",
        ]

    def _schema_objects(self) -> tuple[str, ...]:
        waiting = self._active_index().removesuffix("_active") + "_waits"
        return (self.table, self._active_index(), waiting, self.history_table)

    async def create(self, instance: WorkflowInstance) -> bool:
        """See :meth:`WorkflowStore.create <catga.workflows.WorkflowStore.create>`."""
        validate_identifier(instance.id, "workflow id")
        i = instance
        status = await self._execute(
            "create", None, self._create, i.id, i.name, int(i.version), bytes(i.input), float(i.created_at)
        )
        return deleted(status) == 1

    async def get(self, id: str) -> WorkflowInstance | None:
        """See :meth:`WorkflowStore.get <catga.workflows.WorkflowStore.get>`."""
        record = await self._query("get", None, "fetchrow", self._get, id)
        return None if record is None else _instance(record)

    async def list_instances(self, status: str | None = None, limit: int = 100) -> list[WorkflowInstance]:
        """See :meth:`WorkflowStore.list_instances <catga.workflows.WorkflowStore.list_instances>`."""
        _check_status(status)
        records = await self._query("list", None, "fetch", self._list, status, limit)
        return [_instance(r) for r in records]

    async def history(self, id: str) -> list[HistoryEntry]:
        """See :meth:`WorkflowStore.history <catga.workflows.WorkflowStore.history>`."""
        records = await self._query("history", None, "fetch", self._history, id)
        return [
            HistoryEntry(
                seq=r["seq"],
                kind=r["kind"],
                name=r["name"],
                ok=r["ok"],
                value=bytes(r["value"]),
                at=r["at"],
                error_type=r["error_type"],
            )
            for r in records
        ]

    async def acquire(self, id: str, owner: str, ttl: float) -> int | None:
        """See :meth:`WorkflowStore.acquire <catga.workflows.WorkflowStore.acquire>`."""
        token = await self._query("acquire", None, "fetchval", self._acquire, id, owner, float(ttl))
        return None if token is None else int(token)

    async def renew(self, id: str, token: int, ttl: float) -> bool:
        """See :meth:`WorkflowStore.renew <catga.workflows.WorkflowStore.renew>`."""
        return deleted(await self._execute("renew", None, self._renew, id, token, float(ttl))) == 1

    async def release(self, id: str, token: int) -> None:
        """See :meth:`WorkflowStore.release <catga.workflows.WorkflowStore.release>`."""
        await self._execute("release", None, self._release, id, token)

    async def _stale(self, id: str, token: int) -> StaleFencingTokenError | None:
        row = await self._query("record", None, "fetchrow", self._token, id)
        if row is None or row["token"] != token or not row["owner"]:
            return StaleFencingTokenError(f"workflow {id}", token, 0 if row is None else int(row["token"]))
        return None

    async def record(self, id: str, token: int, entry: HistoryEntry) -> None:
        """See :meth:`WorkflowStore.record <catga.workflows.WorkflowStore.record>`."""
        e = entry
        seq = await self._query(
            "record", None, "fetchval", self._record, id, token, e.seq, e.kind, e.name, e.ok,
            bytes(e.value), e.error_type,
        )  # fmt: skip
        if seq is not None:
            return
        stale = await self._stale(id, token)
        if stale is not None:
            raise stale
        raise ConcurrencyError(f"workflow {id}", e.seq, None)

    async def update(
        self,
        id: str,
        token: int,
        status: str,
        *,
        result: bytes = b"",
        error: str = "",
        wake_at: float = 0.0,
        wait_for: str = "",
        wait_spec: bytes = b"",
    ) -> None:
        """See :meth:`WorkflowStore.update <catga.workflows.WorkflowStore.update>`."""
        _check_status(status)
        done = await self._execute(
            "update", None, self._update, id, token, status, bytes(result), error, float(wake_at),
            wait_for, bytes(wait_spec),
        )  # fmt: skip
        if deleted(done) != 1:
            raise (await self._stale(id, token)) or StaleFencingTokenError(f"workflow {id}", token, 0)

    async def request_cancel(self, id: str) -> bool:
        """See :meth:`WorkflowStore.request_cancel <catga.workflows.WorkflowStore.request_cancel>`."""
        return deleted(await self._execute("request_cancel", None, self._cancel, id)) == 1

    async def waiting(self, event_type: str, limit: int = 1000) -> list[WorkflowInstance]:
        """See :meth:`WorkflowStore.waiting <catga.workflows.WorkflowStore.waiting>`."""
        records = await self._query("waiting", None, "fetch", self._waiting, event_type, limit)
        return [_instance(r) for r in records]

    async def offer(self, id: str, entry: HistoryEntry) -> bool:
        """See :meth:`WorkflowStore.offer <catga.workflows.WorkflowStore.offer>`."""
        e = entry
        seq = await self._query(
            "offer", None, "fetchval", self._offer, id, e.seq, e.kind, e.name, e.ok, bytes(e.value),
            e.error_type,
        )  # fmt: skip
        return seq is not None

    async def due(self, limit: int = 100) -> list[str]:
        """See :meth:`WorkflowStore.due <catga.workflows.WorkflowStore.due>`."""
        records = await self._query("due", None, "fetch", self._due, limit)
        return [r["id"] for r in records]


def _check_status(status: str | None) -> None:
    if status is not None and status not in STATUSES:
        raise ConfigurationError(f"unknown workflow status {status!r}; one of {', '.join(STATUSES)}")


def _instance(r: Any) -> WorkflowInstance:
    return WorkflowInstance(
        id=r["id"], name=r["name"], version=r["version"], input=bytes(r["input"]), status=r["status"],
        result=bytes(r["result"]), error=r["error"], created_at=r["created_at"],
        updated_at=r["updated_at"], wake_at=r["wake_at"], cancel_requested=r["cancel_requested"],
        token=int(r["token"]), owner=r["owner"], lease_until=r["lease_until"], wait_for=r["wait_for"],
        wait_spec=bytes(r["wait_spec"]),
    )  # fmt: skip
