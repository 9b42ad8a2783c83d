"""An event store in one SQLite file (standard library ``sqlite3``, no extra dependency).

For a single host: tests, command-line tools, small services, several processes sharing one file.
One table::

    catga_events (position INTEGER PRIMARY KEY, stream_id TEXT, version INTEGER, type_name TEXT,
                  data BLOB, metadata TEXT, ts REAL, UNIQUE (stream_id, version))

**Order.** SQLite lets one writer in at a time: an append is ``BEGIN IMMEDIATE`` (the database's write
lock, waited for up to ``timeout`` seconds), the version check, the inserts, ``COMMIT``. Positions are
``max(position) + 1`` taken under that lock, so they are handed out in commit order and a reader never
finds a hole that fills later (the problem a PostgreSQL sequence has, see
:mod:`catga.postgres.event_store`). The file is put in WAL mode, so reads never wait for the writer.

**Threads.** ``sqlite3`` blocks, so every call runs in a worker thread (``asyncio.to_thread``) on the
store's one connection, one call at a time (a lock). Live subscribers poll ``read_all`` every
``poll_interval`` seconds and are woken at once by appends made through the same store object.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from catga._payload import DEFAULT_MAX_PAYLOAD, check_max_payload
from catga.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConcurrencyError,
    ConfigurationError,
    PayloadTooLargeError,
    SerializationError,
)
from catga.protocols import ANY, StoredEvent, validate_identifier
from catga.serialization import TypeRegistry, default_registry

__all__ = ("SqliteEventStore",)

T = TypeVar("T")
_BATCH = 512
_COLUMNS = "position, stream_id, version, type_name, data, metadata, ts"
_encode_meta = msgspec.json.Encoder().encode
_decode_meta = msgspec.json.Decoder(dict[str, str]).decode


class SqliteEventStore:
    """:class:`~catga.protocols.EventStore` in a SQLite file (see the module docs).

    Args:
        path: the database file (created if missing), or ``":memory:"`` for a private in-memory one.
        table: the table name (an identifier).
        registry: types allowed in the store (default :func:`~catga.serialization.default_registry`).
        max_payload: the largest encoded event accepted, in bytes (default 1 MiB).
        timeout: seconds an append waits for another writer's lock (another process on the file).
        poll_interval: seconds between a live subscriber's looks for events appended elsewhere.

    Raises:
        ConfigurationError: a bad table name or option.
        BackendUnavailableError: the file cannot be opened.

    Example:
        >>> store = SqliteEventStore("events.db")  # doctest: +SKIP
        >>> await store.append("order-1", [OrderPlaced("order-1", 42)], NO_STREAM)  # doctest: +SKIP
        0
    """

    def __init__(
        self,
        path: str | Path,
        *,
        table: str = "catga_events",
        registry: TypeRegistry | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        timeout: float = 10.0,
        poll_interval: float = 0.1,
    ) -> None:
        if not table.isidentifier() or not table.isascii():
            raise ConfigurationError(f"table {table!r} must be an ASCII identifier")
        if not timeout > 0 or not poll_interval > 0:
            raise ConfigurationError(
                f"timeout and poll_interval must be > 0 seconds, got {timeout!r} and {poll_interval!r}"
            )
        self.path = str(path)
        self.table = table
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.max_payload = check_max_payload(max_payload)
        self._registry = registry if registry is not None else default_registry()
        self._lock = threading.Lock()
        self._closed = False
        self._wakes: set[asyncio.Event] = set()
        try:
            self._db = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (position INTEGER PRIMARY KEY, stream_id TEXT NOT NULL, "
                "version INTEGER NOT NULL, type_name TEXT NOT NULL, data BLOB NOT NULL, metadata TEXT, "
                "ts REAL NOT NULL, UNIQUE (stream_id, version))"
            )
        except sqlite3.Error as exc:
            raise BackendUnavailableError(
                f"SQLite cannot open {self.path!r}: {exc}", backend="sqlite", operation="open"
            ) from exc
        t = table
        self._version = f"SELECT max(version) FROM {t} WHERE stream_id = ?"
        self._insert = f"INSERT INTO {t} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
        self._head = f"SELECT coalesce(max(position), 0) FROM {t}"
        self._read = (
            f"SELECT {_COLUMNS} FROM {t} WHERE stream_id = ? AND version >= ? ORDER BY version LIMIT ?"
        )
        self._read_all = f"SELECT {_COLUMNS} FROM {t} WHERE position >= ? ORDER BY position LIMIT ?"

    # -- plumbing ----------------------------------------------------------------------------------
    async def _run(self, what: str, fn: Callable[[], T]) -> T:
        if self._closed:
            raise BackendUnavailableError(
                f"SQLite {what} on {self.path!r}: the store is closed", backend="sqlite", operation=what
            )

        def locked() -> T:
            with self._lock:
                try:
                    return fn()
                except sqlite3.OperationalError as exc:
                    if "locked" in str(exc) or "busy" in str(exc):
                        raise BackendTimeoutError(
                            f"SQLite {what} on {self.path!r} waited {self.timeout} s for another writer "
                            f"({exc}); retry, or raise the timeout",
                            backend="sqlite",
                            operation=what,
                            seconds=self.timeout,
                        ) from exc
                    raise BackendError(
                        f"SQLite {what} failed: {exc}", backend="sqlite", operation=what
                    ) from exc
                except sqlite3.Error as exc:
                    raise BackendError(
                        f"SQLite {what} failed: {exc}", backend="sqlite", operation=what
                    ) from exc

        return await asyncio.to_thread(locked)

    # -- writes ------------------------------------------------------------------------------------
    async def append(
        self,
        stream_id: str,
        events: Sequence[object],
        expected_version: int = ANY,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Append ``events`` to ``stream_id`` atomically; return the new stream version.

        Raises:
            ConcurrencyError: the stream's version is not ``expected_version``; nothing was stored.
            InvalidIdentifierError: ``stream_id`` is malformed.
            SerializationError, PayloadTooLargeError: an event does not encode or is too large.
            ConfigurationError: a bad ``expected_version``.
            BackendTimeoutError: another writer held the file for ``timeout`` seconds.
        """
        validate_identifier(stream_id)
        if type(expected_version) is not int or expected_version < ANY:
            raise ConfigurationError(
                f"invalid expected_version {expected_version!r} for stream {stream_id!r}: use ANY, "
                "NO_STREAM or a version >= 0"
            )
        encoded: list[tuple[str, bytes]] = []
        for event in events:
            try:
                name, body = self._registry.encode(event)
            except SerializationError:
                raise
            except (TypeError, ValueError) as exc:
                raise SerializationError(f"cannot encode {type(event).__qualname__}: {exc}") from exc
            if len(body) > self.max_payload:
                raise PayloadTooLargeError(
                    len(body), self.max_payload, destination=stream_id, backend="sqlite", what="event"
                )
            encoded.append((name, body))
        meta = _encode_meta(metadata).decode() if metadata else None
        ts = time.time()
        db = self._db

        def write() -> tuple[bool, int]:
            db.execute("BEGIN IMMEDIATE")
            try:
                current = db.execute(self._version, (stream_id,)).fetchone()[0]
                current = -1 if current is None else int(current)
                if expected_version != ANY and expected_version != current:
                    db.execute("ROLLBACK")
                    return False, current
                if encoded:
                    head = int(db.execute(self._head).fetchone()[0])
                    db.executemany(
                        self._insert,
                        [
                            (head + i, stream_id, current + i, name, body, meta, ts)
                            for i, (name, body) in enumerate(encoded, 1)
                        ],
                    )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return True, current + len(encoded)

        ok, version = await self._run("append", write)
        if not ok:
            raise ConcurrencyError(stream_id, expected_version, version)
        if encoded:
            for wake in self._wakes:
                wake.set()
        return version

    # -- reads -------------------------------------------------------------------------------------
    async def read(
        self, stream_id: str, from_version: int = 0, max_count: int | None = None
    ) -> list[StoredEvent]:
        """Events of one stream with ``version >= from_version``, oldest first, at most ``max_count``."""
        validate_identifier(stream_id)
        limit = _limit(max_count)
        if limit == 0:
            return []
        rows = await self._run(
            "read", lambda: self._db.execute(self._read, (stream_id, max(from_version, 0), limit)).fetchall()
        )
        return self._decode(rows)

    async def version(self, stream_id: str) -> int:
        """The stream's current version, -1 when it has no event."""
        validate_identifier(stream_id)
        value = await self._run(
            "version", lambda: self._db.execute(self._version, (stream_id,)).fetchone()[0]
        )
        return -1 if value is None else int(value)

    async def read_all(self, from_position: int = 1, max_count: int | None = None) -> list[StoredEvent]:
        """Events of every stream with ``position >= from_position``, in position (commit) order."""
        limit = _limit(max_count)
        if limit == 0:
            return []
        rows = await self._run(
            "read_all", lambda: self._db.execute(self._read_all, (max(from_position, 1), limit)).fetchall()
        )
        return self._decode(rows)

    def _decode(self, rows: Sequence[Any]) -> list[StoredEvent]:
        decode = self._registry.decode
        return [
            StoredEvent(
                sid, version, position, name, decode(name, data), ts, _decode_meta(meta) if meta else {}
            )
            for position, sid, version, name, data, meta, ts in rows
        ]

    async def subscribe_all(self, from_position: int = 1) -> AsyncIterator[StoredEvent]:
        """Yield every event from ``from_position`` on, stored then live; ends when the store closes."""
        position = max(from_position, 1)
        wake = asyncio.Event()
        self._wakes.add(wake)
        try:
            while not self._closed:
                wake.clear()
                batch = await self.read_all(position, _BATCH)
                for event in batch:
                    yield event
                    position = event.position + 1
                if len(batch) == _BATCH:
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval):
                        await wake.wait()
        except BackendUnavailableError:
            if not self._closed:
                raise
        finally:
            self._wakes.discard(wake)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """End live subscriptions and close the connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for wake in self._wakes:
            wake.set()

        def close() -> None:
            with self._lock:
                self._db.close()

        await asyncio.to_thread(close)

    async def __aenter__(self) -> SqliteEventStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"SqliteEventStore({self.path!r}, table={self.table!r})"


def _limit(max_count: int | None) -> int:
    if max_count is None:
        return -1  # SQLite: no limit
    if max_count < 0:
        raise ConfigurationError(f"max_count must be >= 0 or None, got {max_count}")
    return max_count
