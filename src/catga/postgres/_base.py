"""What the PostgreSQL stores share: the table name check, the pool, lazy DDL and closing."""

from __future__ import annotations

import asyncio
import re
from typing import Any, Self

import asyncpg

from catga.errors import BackendUnavailableError, ConfigurationError

__all__ = ("PgStore", "create_pool", "deleted")

_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?\Z")


async def create_pool(dsn: str, **pool_options: Any) -> Any:
    """An ``asyncpg`` pool for ``dsn``.

    Raises:
        BackendUnavailableError: the server cannot be reached.
    """
    try:
        return await asyncpg.create_pool(dsn, **pool_options)
    except (OSError, asyncpg.PostgresError) as exc:
        raise BackendUnavailableError(f"PostgreSQL connect failed: {exc}", backend="postgres") from exc


def deleted(status: str) -> int:
    """The row count of a ``DELETE n`` command status."""
    return int(status.rsplit(" ", 1)[-1])


class PgStore:
    """A store on one table of an ``asyncpg`` pool, whose DDL runs once, on first use.

    Subclasses set :attr:`default_table` and implement :meth:`_ddl`.
    """

    default_table = "catga"

    def __init__(self, pool: Any, *, table: str | None = None, owns_pool: bool = False) -> None:
        table = self.default_table if table is None else table
        if not _TABLE.match(table):
            raise ConfigurationError(f"table {table!r} must be an identifier, optionally schema.table")
        self.pool = pool
        self.table = table
        self._owns_pool = owns_pool
        self._ready = False
        self._lock: asyncio.Lock | None = None

    @classmethod
    async def connect(cls, dsn: str, *, table: str | None = None, **pool_options: Any) -> Self:
        """Create a pool for ``dsn`` (closed by :meth:`aclose`) and a store on it.

        Raises:
            BackendUnavailableError: the server cannot be reached.
        """
        return cls(await create_pool(dsn, **pool_options), table=table, owns_pool=True)

    def _ddl(self) -> list[str]:
        """``CREATE ... IF NOT EXISTS`` statements for the table."""
        raise NotImplementedError

    async def ensure_schema(self) -> None:
        """Create the table (and indexes) if missing; done on first use, idempotent."""
        if self._ready:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self._ready:
                async with self.pool.acquire() as conn:
                    for statement in self._ddl():
                        await conn.execute(statement)
                self._ready = True

    async def ping(self) -> None:
        """Check the server answers ``SELECT 1`` (a health check, see :meth:`catga.App.health`)."""
        await self.pool.fetchval("SELECT 1")

    async def aclose(self) -> None:
        """Close the pool if :meth:`connect` created it. Idempotent."""
        if self._owns_pool:
            self._owns_pool = False
            await self.pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(table={self.table!r})"
