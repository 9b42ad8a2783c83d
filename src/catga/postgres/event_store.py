"""An event store in PostgreSQL whose global order never skips an event committed late.

Tables (default ``catga_events``; created by ``connect()``, ``ensure_schema()``, ``App.start`` or the
first call that uses the pool, see :mod:`catga.postgres._base`)::

    catga_events          position bigint PRIMARY KEY, stream_id text, version int,
                          type_name text, data bytea, metadata jsonb, ts float8,
                          UNIQUE (stream_id, version)
    catga_events_streams  stream_id text PRIMARY KEY, version int      -- one row per stream
    catga_events_head     id smallint PRIMARY KEY, position bigint     -- one row: the last position

**The global order is the commit order.** A sequence (``bigserial``) hands out numbers in the order
transactions *ask*, not the order they *commit*: transaction A takes 10, B takes 11, B commits, a
subscriber reads 11 and moves on, then A commits 10 — and the subscriber never sees it. Here every
append first moves the one row of ``catga_events_head`` forward (``UPDATE ... SET position = position
+ n RETURNING``), which row-locks it until the appending transaction ends. The next appender waits
for that lock, so positions are handed out one transaction at a time, in commit order; PostgreSQL
makes a transaction visible before it releases its locks, so a reader that sees position *p* already
sees every position below *p* that will ever exist. A subscriber that reads ``position > last`` never
skips one, and ``read_all`` returns the same order every time. A rolled-back append leaves no trace (its
head move rolls back too); an append that fails its version check inside *your* transaction leaves a
gap if you commit anyway (gaps are allowed by the contract).

**The cost**: appends to *different* streams do not run in parallel — each holds the head row from its
statement until its transaction commits (with ``synchronous_commit = on``, through the WAL flush). Inside
your own transaction (``connection=`` or a :class:`~catga.postgres.PostgresUnitOfWork`) the lock is
held until *you* commit: append last, and keep the rest of the transaction short. This is the
choice eventsourcing's PostgreSQL recorder makes too (it locks the whole table); the alternative — a
gap-aware high-water mark that waits for in-flight sequence numbers, as Marten does — lets appends
run in parallel but makes readers wait (or skip after a timeout) on every hole, and was not worth its
complexity here. Reads never take the lock.

**Optimistic concurrency** happens in one statement, under a row lock, against the latest committed
version (never a stale snapshot): the stream's row in ``catga_events_streams`` is upserted with
``INSERT ... ON CONFLICT DO UPDATE ... WHERE version = expected``; no row back means a conflict, and
nothing is written. An append is one statement, so one round trip: head, stream row, events and a
``pg_notify`` to the live subscribers.

**Live subscribers** (:meth:`PostgresEventStore.subscribe_all`) hold one pool connection each; they
``LISTEN`` on a channel named after the table and poll every ``poll_interval`` seconds as well, so a
lost notification only delays, never loses, an event.

The event body is the registry's encoding (JSON by default, ``bytea``); metadata is ``jsonb`` (NULL when
empty). Times are the clients' unix time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any

import msgspec

from catga._payload import DEFAULT_MAX_PAYLOAD, check_max_payload
from catga.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    ConcurrencyError,
    ConfigurationError,
    PayloadTooLargeError,
    SerializationError,
)
from catga.postgres._base import DEFAULT_TIMEOUT, PgStore
from catga.protocols import ANY, NO_STREAM, StoredEvent, validate_identifier
from catga.serialization import TypeRegistry, default_registry

__all__ = ("PostgresEventStore",)

logger = logging.getLogger("catga.postgres.event_store")

_BATCH = 512
_RETRY_MAX = 2.0
_COLUMNS = "position, stream_id, version, type_name, data, metadata, ts"
_encode_meta = msgspec.json.Encoder().encode
_decode_meta = msgspec.json.Decoder(dict[str, str]).decode


class PostgresEventStore(PgStore):
    """:class:`~catga.protocols.EventStore` on PostgreSQL (see the module docs for the design).

    Args:
        pool: an ``asyncpg`` pool (closed by :meth:`aclose` only if :meth:`connect` created it).
        table: the events table, optionally ``schema.table``; the stream and head tables are named
            after it (``<table>_streams``, ``<table>_head``).
        owns_pool: close ``pool`` in :meth:`aclose`.
        timeout: seconds to wait for a pool connection and for each statement (``None``: no limit).
            An append waits for the head row while another transaction holds it: this limits that too.
        registry: types allowed in the store (default :func:`~catga.serialization.default_registry`).
        max_payload: the largest encoded event accepted, in bytes (default 1 MiB); a larger one raises
            :class:`~catga.errors.PayloadTooLargeError`, nothing stored.
        poll_interval: seconds a live subscriber waits for a notification before it looks anyway.

    Raises:
        ConfigurationError: a bad table name, timeout, ``max_payload`` or ``poll_interval``.

    Example:
        >>> store = await PostgresEventStore.connect("postgresql://app@db/app")  # doctest: +SKIP
        >>> await store.append("order-1", [OrderPlaced("order-1", 42)], NO_STREAM)  # doctest: +SKIP
        0
    """

    default_table = "catga_events"

    def __init__(
        self,
        pool: Any,
        *,
        table: str | None = None,
        owns_pool: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        registry: TypeRegistry | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        poll_interval: float = 1.0,
    ) -> None:
        super().__init__(pool, table=table, owns_pool=owns_pool, timeout=timeout)
        if not poll_interval > 0:
            raise ConfigurationError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
        self._registry = registry if registry is not None else default_registry()
        self.max_payload = check_max_payload(max_payload)
        self.poll_interval = poll_interval
        t = self.table
        self.streams_table = f"{t}_streams"
        self.head_table = f"{t}_head"
        self.channel = t.replace(".", "_")
        s, h = self.streams_table, self.head_table
        # One statement: move the head (row lock until commit: commit-ordered positions), then check
        # and move the stream's version under its row lock, then insert the events and notify.
        self._append = (
            f"WITH head AS (UPDATE {h} SET position = position + $5::int WHERE id = 1 "
            "RETURNING position - $5::int AS base), "
            f"upd AS (UPDATE {s} SET version = {s}.version + $5::int FROM head "
            f"WHERE {s}.stream_id = $1 AND ($2::int = -2 OR {s}.version = $2::int) "
            f"RETURNING {s}.version - $5::int AS cur), "
            f"ins AS (INSERT INTO {s} (stream_id, version) SELECT $1, $5::int - 1 FROM head "
            "WHERE $2::int IN (-2, -1) AND NOT EXISTS (SELECT 1 FROM upd) "
            f"ON CONFLICT (stream_id) DO UPDATE SET version = {s}.version + $5::int WHERE $2::int = -2 "
            "RETURNING version - $5::int AS cur), "
            "stream AS (SELECT cur FROM upd UNION ALL SELECT cur FROM ins), "
            f"ev AS (INSERT INTO {t} ({_COLUMNS}) "
            "SELECT head.base + u.i, $1, stream.cur + u.i::int, u.name, u.body, $6::jsonb, $7::float8 "
            "FROM head, stream, unnest($3::text[], $4::bytea[]) WITH ORDINALITY AS u(name, body, i)) "
            "SELECT (SELECT cur FROM stream), "
            f"(SELECT count(*) FROM (SELECT pg_notify('{self.channel}', '') FROM stream) n)"
        )
        self._version = f"SELECT version FROM {s} WHERE stream_id = $1"
        self._read = (
            f"SELECT {_COLUMNS} FROM {t} WHERE stream_id = $1 AND version >= $2 ORDER BY version LIMIT $3"
        )
        self._read_all = f"SELECT {_COLUMNS} FROM {t} WHERE position >= $1 ORDER BY position LIMIT $2"
        self._last = f"SELECT position FROM {h} WHERE id = 1"
        self._listeners: set[Any] = set()
        self._wakes: set[asyncio.Event] = set()
        self._closed = False

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        table: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        registry: TypeRegistry | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        poll_interval: float = 1.0,
        **pool_options: Any,
    ) -> PostgresEventStore:
        """Create a pool for ``dsn`` (closed by :meth:`aclose`) and a store on it, schema set up.

        Raises:
            BackendUnavailableError: the server cannot be reached.
            BackendTimeoutError: it did not answer in time.
            ConfigurationError: it refused the credentials, is too old, or the role may not create
                the missing tables; or an option is invalid.
        """
        from catga.postgres._base import create_pool

        store = cls(
            await create_pool(dsn, timeout=timeout, **pool_options),
            table=table,
            owns_pool=True,
            timeout=timeout,
            registry=registry,
            max_payload=max_payload,
            poll_interval=poll_interval,
        )
        try:
            await store.ensure_schema()
        except BaseException:
            store.pool.terminate()
            raise
        return store

    def _ddl(self) -> list[str]:
        t, s, h = self.table, self.streams_table, self.head_table
        return [
            f"CREATE TABLE IF NOT EXISTS {t} (position bigint PRIMARY KEY, stream_id text NOT NULL, "
            "version integer NOT NULL, type_name text NOT NULL, data bytea NOT NULL, metadata jsonb, "
            "ts float8 NOT NULL, UNIQUE (stream_id, version))",
            f"CREATE TABLE IF NOT EXISTS {s} (stream_id text PRIMARY KEY, version integer NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {h} (id smallint PRIMARY KEY, position bigint NOT NULL)",
            f"INSERT INTO {h} (id, position) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
        ]

    def _schema_objects(self) -> tuple[str, ...]:
        return (self.table, self.streams_table, self.head_table)

    # -- writes ----------------------------------------------------------------------------------
    async def append(
        self,
        stream_id: str,
        events: Sequence[object],
        expected_version: int = ANY,
        *,
        metadata: Mapping[str, str] | None = None,
        connection: Any = None,
    ) -> int:
        """Append ``events`` to ``stream_id`` atomically; return the new stream version.

        Args:
            stream_id: a valid identifier (:func:`~catga.protocols.validate_identifier`).
            events: the events; an empty sequence stores nothing and returns the current version
                (still checking ``expected_version``).
            expected_version: :data:`~catga.protocols.ANY`, :data:`~catga.protocols.NO_STREAM` or the
                exact current version.
            metadata: string metadata stored with each event.
            connection: an ``asyncpg`` connection inside *your* transaction: the events commit or roll
                back with it (and the global order waits for your commit, see the module docs). Without
                one, the append is a transaction of its own — or joins the current
                :class:`~catga.postgres.PostgresUnitOfWork` on this store's pool.

        Raises:
            ConcurrencyError: the stream's version is not ``expected_version``; nothing was stored.
            InvalidIdentifierError: ``stream_id`` is malformed.
            SerializationError: an event does not encode (nothing was stored).
            PayloadTooLargeError: an encoded event is over ``max_payload`` (nothing was stored).
            ConfigurationError: a bad ``expected_version``; or ``connection`` is in a transaction and
                the tables do not exist yet (call :meth:`ensure_schema` at start-up).
            BackendUnavailableError, BackendTimeoutError: the server failed; without ``connection``
                the append may or may not have happened (re-read the stream to find out).
        """
        validate_identifier(stream_id)
        if type(expected_version) is not int or expected_version < ANY:
            raise ConfigurationError(
                f"invalid expected_version {expected_version!r} for stream {stream_id!r}: use ANY, "
                "NO_STREAM or a version >= 0"
            )
        encode = self._registry.encode
        names: list[str] = []
        bodies: list[bytes] = []
        for event in events:
            try:
                name, body = encode(event)
            except SerializationError:
                raise
            except (TypeError, ValueError) as exc:  # msgspec refusing the type at registration
                raise SerializationError(f"cannot encode {type(event).__qualname__}: {exc}") from exc
            if len(body) > self.max_payload:
                raise PayloadTooLargeError(
                    len(body), self.max_payload, destination=stream_id, backend="postgres", what="event"
                )
            names.append(name)
            bodies.append(body)
        if not names:
            current = await self.version(stream_id, connection=connection)
            if expected_version != ANY and expected_version != current:
                raise ConcurrencyError(stream_id, expected_version, current)
            return current
        meta = _encode_meta(metadata).decode() if metadata else None
        for _ in range(3):
            row = await self._query(
                "append", connection, "fetchrow", self._append,
                stream_id, expected_version, names, bodies, len(names), meta, time.time(),
            )  # fmt: skip
            cur = row[0]
            if cur is not None:
                return int(cur) + len(names)
            # The version check failed, nothing was written. A stream created after the statement's
            # snapshot is invisible to it: look again in a new statement before calling it a conflict.
            actual = await self.version(stream_id, connection=connection)
            if actual != expected_version:
                break
        raise ConcurrencyError(stream_id, expected_version, actual)

    # -- reads -----------------------------------------------------------------------------------
    async def read(
        self,
        stream_id: str,
        from_version: int = 0,
        max_count: int | None = None,
        *,
        connection: Any = None,
    ) -> list[StoredEvent]:
        """Events of one stream with ``version >= from_version``, oldest first, at most ``max_count``.

        An unknown stream reads as ``[]``. With ``connection``, read on it (and see your own
        uncommitted appends).

        Raises:
            InvalidIdentifierError: ``stream_id`` is malformed.
            ConfigurationError: ``max_count`` is negative.
            SerializationError: a stored event's type is not in the registry, or its bytes are malformed.
        """
        validate_identifier(stream_id)
        limit = _limit(max_count)
        if limit == 0:
            return []
        rows = await self._query(
            "read", connection, "fetch", self._read, stream_id, max(from_version, 0), limit
        )
        return self._decode(rows)

    async def version(self, stream_id: str, *, connection: Any = None) -> int:
        """The stream's current version, -1 when it has no event.

        Raises:
            InvalidIdentifierError: ``stream_id`` is malformed.
        """
        validate_identifier(stream_id)
        value = await self._query("version", connection, "fetchval", self._version, stream_id)
        return -1 if value is None else int(value)

    async def last_position(self) -> int:
        """Position of the newest committed event, 0 when the store is empty."""
        return int(await self._query("last_position", None, "fetchval", self._last))

    async def read_all(self, from_position: int = 1, max_count: int | None = None) -> list[StoredEvent]:
        """Events of every stream with ``position >= from_position``, in position (commit) order.

        Raises:
            ConfigurationError: ``max_count`` is negative.
        """
        limit = _limit(max_count)
        if limit == 0:
            return []
        rows = await self._query("read_all", None, "fetch", self._read_all, max(from_position, 1), limit)
        return self._decode(rows)

    def _decode(self, rows: Sequence[Any]) -> list[StoredEvent]:
        decode = self._registry.decode
        out: list[StoredEvent] = []
        for position, stream_id, version, name, data, meta, ts in rows:
            out.append(
                StoredEvent(
                    stream_id,
                    version,
                    position,
                    name,
                    decode(name, data),
                    ts,
                    _decode_meta(meta) if meta is not None else {},
                )
            )
        return out

    # -- subscription ----------------------------------------------------------------------------
    async def subscribe_all(self, from_position: int = 1) -> AsyncIterator[StoredEvent]:
        """Yield every event from ``from_position`` on, in position order: stored ones, then live.

        Holds one pool connection while iterating (``LISTEN`` on :attr:`channel`, plus a look every
        ``poll_interval`` seconds). A lost connection is noticed at once and retried with backoff from
        the last position yielded, so no event is skipped or repeated. Close the iterator
        (``aclose()``), cancel its task, or close the store to stop.
        """
        position = max(from_position, 1)
        wake = asyncio.Event()
        self._wakes.add(wake)
        retry = 0.05

        def notified(*_: object) -> None:
            wake.set()

        try:
            async with contextlib.aclosing(self._follow(position, wake, notified, retry)) as events:
                async for event in events:
                    yield event
        finally:
            self._wakes.discard(wake)

    async def _follow(
        self, position: int, wake: asyncio.Event, notified: Any, retry: float
    ) -> AsyncGenerator[StoredEvent, None]:
        while not self._closed:
            try:
                if not self._ready:
                    await self.ensure_schema()
                acquired = self.pool.acquire(timeout=self.timeout)  # asyncpg's Pool or a catga PgPool
                with self._errors("subscribe_all"):
                    conn = await acquired.__aenter__()
            except (BackendUnavailableError, BackendTimeoutError) as exc:
                await self._backoff(exc, retry)
                retry = min(retry * 2, _RETRY_MAX)
                continue
            self._listeners.add(conn)
            lost: list[object] = []

            def on_lost(closed: object, lost: list[object] = lost) -> None:  # dropped by server or network
                lost.append(closed)
                wake.set()

            try:
                conn.add_termination_listener(on_lost)  # noticed at once, not at the next poll
                with self._errors("subscribe_all"):
                    await conn.add_listener(self.channel, notified)
                retry = 0.05
                while not self._closed:
                    wake.clear()
                    if lost:  # asyncpg has handed the connection back to the pool already
                        raise BackendUnavailableError(
                            f"PostgreSQL subscribe_all on {self.table}: its connection was lost",
                            backend="postgres",
                            operation="subscribe_all",
                        )
                    with self._errors("subscribe_all"):
                        rows = await conn.fetch(self._read_all, position, _BATCH, timeout=self.timeout)
                    for event in self._decode(rows):
                        yield event
                        position = event.position + 1
                    if len(rows) == _BATCH:
                        continue
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.poll_interval):
                            await wake.wait()
            except (BackendUnavailableError, BackendTimeoutError) as exc:
                if self._closed:
                    return
                await self._backoff(exc, retry)
                retry = min(retry * 2, _RETRY_MAX)
            finally:
                self._listeners.discard(conn)
                await asyncio.shield(self._release(acquired, conn, on_lost, notified))

    async def _backoff(self, exc: Exception, delay: float) -> None:
        logger.warning("subscribe_all on %s: %s; retrying in %.2f s", self.table, exc, delay)
        await asyncio.sleep(delay)

    async def _release(self, acquired: Any, conn: Any, on_lost: Any, listener: Any) -> None:
        try:
            conn.remove_termination_listener(on_lost)
            if not conn.is_closed():
                async with asyncio.timeout(self.timeout or DEFAULT_TIMEOUT):
                    await conn.remove_listener(self.channel, listener)
        except Exception as exc:  # the connection is gone: the pool replaces it
            logger.debug("subscribe_all: could not UNLISTEN (%r)", exc)
        try:
            await acquired.__aexit__(None, None, None)
        except Exception as exc:
            logger.debug("subscribe_all: could not release its connection (%r)", exc)

    # -- lifecycle -------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """End live subscriptions, then close the pool if :meth:`connect` created it. Idempotent.

        A subscriber's connection is terminated at once; an owned pool with live subscribers is
        terminated rather than closed (a subscriber parked at a ``yield`` would hold ``close()``
        forever). The iterators end when next resumed.
        """
        self._closed = True
        for wake in self._wakes:
            wake.set()
        if self._listeners:
            for conn in list(self._listeners):
                conn.terminate()
            if self._owns_pool:
                self._owns_pool = False
                self.pool.terminate()
                return
        await super().aclose()


def _limit(max_count: int | None) -> int | None:
    if max_count is None:
        return None
    if max_count < 0:
        raise ConfigurationError(f"max_count must be >= 0 or None, got {max_count}")
    return max_count


_ = NO_STREAM  # re-exported name used in the docs' examples
