"""What the PostgreSQL stores share: the table name check, the pool, the schema set-up, the server
version gate, timeouts, error translation and closing.

**Schema set-up never waits for the pool behind the caller's back.** :meth:`PgStore.ensure_schema`
runs once per store object — at :meth:`PgStore.connect` (so at ``App.start`` for a
``postgresql://`` URL), at :meth:`PgStore.start` (``App.start`` for a store object you pass in), on
``async with store``, or on the first call that uses the pool anyway — on a pool connection of its
own, outside any transaction of yours. A call given ``connection=`` never takes a second connection:
it checks on *your* connection (``to_regclass``, one catalog read, harmless inside your transaction)
that the table exists, and when it does not:

* your connection is not in a transaction: the schema is created on it;
* it is: :class:`~catga.errors.ConfigurationError` — catga will not run DDL inside your transaction
  (``CREATE INDEX`` would hold a lock on the table until you commit, blocking every other writer, and
  your rollback would silently drop the table again). Call ``ensure_schema()`` at start-up, or
  create the table in a migration.

Before, the first call with ``connection=`` took a second pool connection for the DDL: once the
callers held every pool connection in their transactions, all of them waited forever.

**Race-free across processes.** When ``to_regclass`` finds something missing, the DDL runs in a
transaction holding ``pg_advisory_xact_lock`` on one catga-wide key, so concurrent first calls from
many processes create the table one after the other (PostgreSQL's ``CREATE TABLE IF NOT EXISTS`` alone
is not atomic: two sessions can both miss the table and one fails on ``pg_type_typname_nsp_index``).
A duplicate-object error from a creator that does not take the lock (a migration) is checked and
ignored when the table is complete. A role without ``CREATE`` privilege works as long as the table
exists: the check reads the catalog, no DDL is attempted.

**Version gate.** The SQL needs PostgreSQL 9.5 (``INSERT ... ON CONFLICT``, ``FOR UPDATE SKIP
LOCKED``, ``CREATE INDEX IF NOT EXISTS``); an older server is refused when the schema is set up (once
per store, from the version the server reported at connect — no extra round trip).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Literal, NamedTuple, Self

import asyncpg
import asyncpg.exceptions as pgexc

from catga._urls import redact_url
from catga.errors import ConfigurationError
from catga.postgres._errors import PgErrors
from catga.postgres._tx import joined_connection

__all__ = (
    "DEFAULT_TIMEOUT",
    "MIN_SERVER_VERSION",
    "SCHEMA_LOCK_KEY",
    "PgPool",
    "PgStore",
    "check_server_version",
    "create_pool",
    "deleted",
    "format_version",
)

DEFAULT_TIMEOUT = 10.0
"""Seconds a store waits for a pool connection, and for each statement, by default."""

MIN_SERVER_VERSION = (9, 5)
"""The oldest PostgreSQL whose SQL the stores use: ``INSERT ... ON CONFLICT``, ``FOR UPDATE SKIP
LOCKED`` and ``CREATE INDEX IF NOT EXISTS`` came in 9.5 (``jsonb`` and ``to_regclass`` in 9.4)."""

_FEATURES = "INSERT ... ON CONFLICT, FOR UPDATE SKIP LOCKED"

SCHEMA_LOCK_KEY = 0x63617467615F5347  # b"catga_SG": the advisory lock held while creating tables
"""The ``pg_advisory_xact_lock`` key every catga store holds while it creates its tables."""

_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?\Z")
_Kind = Literal["execute", "executemany", "fetch", "fetchrow", "fetchval"]
_DUPLICATE = (pgexc.UniqueViolationError, pgexc.DuplicateTableError, pgexc.DuplicateObjectError)


class _Version(NamedTuple):
    major: int
    minor: int


def check_server_version(version: Any, where: str = "") -> None:
    """Refuse a server older than :data:`MIN_SERVER_VERSION`.

    Args:
        version: asyncpg's ``connection.get_server_version()`` (``major``, ``minor``, ``micro``...).
        where: the server, for the message (``" at 127.0.0.1:5432"``).

    Raises:
        ConfigurationError: the server is too old; the message names the version found and needed.
    """
    found = _Version(int(version.major), int(version.minor))
    if found < MIN_SERVER_VERSION:
        need = ".".join(map(str, MIN_SERVER_VERSION))
        raise ConfigurationError(
            f"PostgreSQL {format_version(version)}{where} is too old: catga's PostgreSQL stores need "
            f"{need} or newer ({_FEATURES}); upgrade the server"
        )


def format_version(version: Any) -> str:
    """``9.4.26`` for 9.x servers, ``16.2`` from 10 on (asyncpg puts the minor release in ``micro``)."""
    if version.major >= 10:
        return f"{version.major}.{version.micro}"
    return f"{version.major}.{version.minor}.{version.micro}"


async def _keep_session(conn: Any) -> None:
    """The ``reset`` of the pools catga creates: nothing beyond asyncpg's own clean-up.

    asyncpg still rolls back an open transaction and drops listener callbacks on release; its default
    reset also runs ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` — one more
    round trip per pooled call, undoing session state catga's stores never leave behind (they take
    transaction-scoped advisory locks only, no cursors or ``SET``, and ``UNLISTEN`` themselves).
    """


async def create_pool(dsn: str, *, timeout: float | None = DEFAULT_TIMEOUT, **pool_options: Any) -> Any:
    """An ``asyncpg`` pool for ``dsn``; ``timeout`` limits each connection attempt.

    Released connections skip asyncpg's session-reset query unless ``reset=`` is passed (see
    :func:`_keep_session`): it doubled the round trips of every store call.

    Raises:
        BackendUnavailableError: the server cannot be reached.
        BackendTimeoutError: it did not answer within ``timeout`` seconds.
        ConfigurationError: it refused the user, password or database.
    """
    if timeout is not None:
        pool_options.setdefault("timeout", timeout)
    pool_options.setdefault("reset", _keep_session)
    with PgErrors(f"connect to {redact_url(dsn)}", timeout):
        return await asyncpg.create_pool(dsn, **pool_options)


def deleted(status: str) -> int:
    """The row count of a ``DELETE n`` command status."""
    return int(status.rsplit(" ", 1)[-1])


class PgPool:
    """An ``asyncpg`` pool for ``dsn`` that exists between :meth:`open` and :meth:`aclose`.

    What a ``postgresql://`` URL of an ``App`` builds its stores on: the stores are made in the
    app's constructor, ``App.start()`` opens the pool, ``App.aclose()`` closes it and a restart opens
    a new one. Until it is open, :meth:`acquire` raises :class:`~catga.errors.ConfigurationError`
    (no connect on demand: the app's connections open and close with the app).

    Args:
        dsn: the ``postgresql://`` URL.
        timeout: seconds allowed for each connection attempt.
        **pool_options: more ``asyncpg.create_pool`` keyword arguments.
    """

    def __init__(self, dsn: str, *, timeout: float | None = DEFAULT_TIMEOUT, **pool_options: Any) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self._options = pool_options
        self._pool: Any = None

    @property
    def opened(self) -> bool:
        """True between :meth:`open` and :meth:`aclose`."""
        return self._pool is not None

    async def open(self) -> None:
        """Create the pool (a no-op while open).

        Raises:
            BackendUnavailableError: the server cannot be reached.
            BackendTimeoutError: it did not answer within ``timeout`` seconds.
            ConfigurationError: it refused the user, password or database.
        """
        if self._pool is None:
            self._pool = await create_pool(self.dsn, timeout=self.timeout, **self._options)

    def acquire(self, *, timeout: float | None = None) -> Any:
        """A pool connection, as ``asyncpg.Pool.acquire`` (``async with pool.acquire() as conn``).

        Raises:
            ConfigurationError: the pool is not open.
        """
        pool = self._pool
        if pool is None:
            raise ConfigurationError(
                f"the PostgreSQL pool for {redact_url(self.dsn)} is not open: App.start() opens it and "
                "App.aclose() closes it; use the app's stores inside `async with app:` (or after "
                "`await app.start()`)"
            )
        return pool.acquire(timeout=timeout)

    def terminate(self) -> None:
        """Close the pool at once, without waiting (when cancelled)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()

    async def aclose(self) -> None:
        """Close the pool (waiting for connections in use to be released). Idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    close = aclose

    def __repr__(self) -> str:
        return f"PgPool({redact_url(self.dsn)!r}, {'open' if self._pool is not None else 'not open'})"


class PgStore:
    """A store on one table of an ``asyncpg`` pool (see the module docs for the schema set-up).

    Subclasses set :attr:`default_table`, build their statements in :meth:`_build_sql` and implement
    :meth:`_ddl` (and :meth:`_schema_objects` when the DDL creates more than the table).

    Args:
        pool: an ``asyncpg`` pool or a :class:`PgPool` (closed by :meth:`aclose` only if
            :meth:`connect` created it).
        table: the table name, optionally ``schema.table``.
        owns_pool: close ``pool`` in :meth:`aclose`.
        timeout: seconds to wait for a pool connection and for each statement (``None``: no limit).

    Raises:
        ConfigurationError: the table name is not a plain SQL identifier, or the timeout is not
            positive.
    """

    default_table = "catga"

    def __init__(
        self,
        pool: Any,
        *,
        table: str | None = None,
        owns_pool: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        table = self.default_table if table is None else table
        if not _TABLE.match(table):
            raise ConfigurationError(f"table {table!r} must be an identifier, optionally schema.table")
        if timeout is not None and not timeout > 0:
            raise ConfigurationError(f"timeout must be > 0 seconds or None, got {timeout!r}")
        self.pool = pool
        self.table = table
        self.timeout = timeout
        self._owns_pool = owns_pool
        self._ready = False
        self._lock: asyncio.Lock | None = None
        self._boundaries: dict[str, PgErrors] = {}
        self._build_sql()

    def _build_sql(self) -> None:
        """Subclass hook: build the statements on :attr:`table` (called once, by the constructor)."""

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        table: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        **pool_options: Any,
    ) -> Self:
        """Create a pool for ``dsn`` (closed by :meth:`aclose`) and a store on it, and set the schema
        up (version check, table) before returning.

        Raises:
            BackendUnavailableError: the server cannot be reached.
            BackendTimeoutError: it did not answer in time.
            ConfigurationError: it refused the credentials, is too old, or the role may not create
                the missing table.
        """
        store = cls(
            await create_pool(dsn, timeout=timeout, **pool_options),
            table=table,
            owns_pool=True,
            timeout=timeout,
        )
        try:
            await store.ensure_schema()
        except BaseException:
            store.pool.terminate()  # no await: also right when cancelled
            raise
        return store

    def _ddl(self) -> list[str]:
        """``CREATE ... IF NOT EXISTS`` statements for the table."""
        raise NotImplementedError

    def _schema_objects(self) -> tuple[str, ...]:
        """The relations :meth:`_ddl` creates, as ``to_regclass`` names (all present: nothing to do)."""
        return (self.table,)

    def _errors(self, what: str) -> PgErrors:
        """The (cached) error boundary of operation ``what`` on this table."""
        boundary = self._boundaries.get(what)
        if boundary is None:
            boundary = self._boundaries[what] = PgErrors(f"{what} on {self.table}", self.timeout, self)
        return boundary

    async def ensure_schema(self) -> None:
        """Check the server version and create the table (and indexes) if missing, on a pool
        connection of its own, outside any transaction of yours. Idempotent; once done, a no-op.

        Raises:
            ConfigurationError: the server is too old, or the role may not create the missing table.
            BackendUnavailableError: the server cannot be reached.
            BackendTimeoutError: no pool connection or no answer within the store's timeout.
        """
        if self._ready:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self._ready:
                with self._errors("schema set-up"):
                    async with self.pool.acquire(timeout=self.timeout) as conn:
                        await self._set_up(conn)
                self._ready = True

    async def start(self) -> None:
        """Set the schema up (``App.start`` calls this for a store object it was given)."""
        await self.ensure_schema()

    async def _set_up(self, conn: Any) -> None:
        """Version check, then the DDL under the advisory lock if anything is missing; ``conn`` is
        not in a transaction."""
        check_server_version(conn.get_server_version())
        if await self._schema_exists(conn):
            return
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_KEY, timeout=self.timeout)
                for statement in self._ddl():
                    await conn.execute(statement, timeout=self.timeout)
        except _DUPLICATE:  # created at this moment by someone not taking the lock (a migration)
            if not await self._schema_exists(conn):
                raise

    async def _schema_exists(self, conn: Any) -> bool:
        names = self._schema_objects()
        query = "SELECT " + " AND ".join(f"to_regclass(${i}) IS NOT NULL" for i in range(1, len(names) + 1))
        return bool(await conn.fetchval(query, *names, timeout=self.timeout))

    async def _ready_on(self, conn: Any, what: str) -> None:
        """The schema check of a call given ``connection=conn``: on ``conn`` only, never another
        pool connection (see the module docs).

        Raises:
            ConfigurationError: the table is missing and ``conn`` is inside a transaction.
        """
        with self._errors(what):
            check_server_version(conn.get_server_version())
            if await self._schema_exists(conn):
                self._ready = True
                return
            if not conn.is_in_transaction():
                await self._set_up(conn)
                self._ready = True
                return
        found = " / ".join(self._schema_objects())
        raise ConfigurationError(
            f"PostgreSQL {what} on {self.table}: the table is not set up yet ({found} not found), "
            "and catga will not create it inside your transaction (the DDL would lock the table "
            "until you commit, and a rollback would drop it again); call `await "
            "store.ensure_schema()` at start-up (connect() and App.start do), or create it in a "
            "migration (docs/postgres.md)"
        )

    async def _query(self, what: str, connection: Any, kind: _Kind, query: str, *args: Any) -> Any:
        """Run one statement (``kind`` is the asyncpg method) on ``connection`` — and no other — or,
        when it is None, on the running unit of work's connection (same pool), else on a pool
        connection; set the schema up first if needed."""
        if connection is None:
            connection = joined_connection(self.pool)
        if connection is not None:
            if not self._ready:
                await self._ready_on(connection, what)
            with self._errors(what):
                return await getattr(connection, kind)(query, *args, timeout=self.timeout)
        if not self._ready:
            await self.ensure_schema()
        with self._errors(what):
            async with self.pool.acquire(timeout=self.timeout) as conn:
                return await getattr(conn, kind)(query, *args, timeout=self.timeout)

    async def _execute(self, what: str, connection: Any, query: str, *args: Any) -> str:
        """:meth:`_query` of an ``execute``: the command status (``"DELETE 3"``)."""
        return str(await self._query(what, connection, "execute", query, *args))

    async def ping(self) -> None:
        """Check the server answers ``SELECT 1`` (a health check, see :meth:`catga.App.health`)."""
        with self._errors("ping"):
            async with self.pool.acquire(timeout=self.timeout) as conn:
                await conn.fetchval("SELECT 1", timeout=self.timeout)

    async def aclose(self) -> None:
        """Close the pool if :meth:`connect` created it. Idempotent."""
        if self._owns_pool:
            self._owns_pool = False
            await self.pool.close()

    async def __aenter__(self) -> Self:
        await self.ensure_schema()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(table={self.table!r})"
