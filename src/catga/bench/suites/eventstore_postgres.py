"""PostgreSQL event store: catga's against eventsourcing's PostgreSQL recorder, same server, same run.

Cases (each worker owns one stream; closed loop):

* ``append_1``: append one event with the exact expected version (optimistic concurrency).
* ``append_10``: append ten events at once, exact expected version.
* ``read_10``: read a whole ten-event stream.

Implementations:

* ``catga``: :class:`~catga.postgres.PostgresEventStore` on an asyncpg pool (one statement per append:
  commit-ordered global position, version check under the stream's row lock, the events).
* ``eventsourcing``: ``PostgresApplicationRecorder`` (psycopg 3, its own connection pool) — the
  recorder with a global order (notification ids), which it keeps commit-ordered by locking the table
  for each insert; a conflict is its primary key ``(originator_id, originator_version)``. Its API is
  blocking, so each call runs in a worker thread (``asyncio.to_thread``), as an asyncio app would call it.

Both get the same encoded event bytes (the registry's JSON) and a pool of ``max_concurrency``
connections, on a fresh table dropped afterwards. The server the harness starts runs with durability
off (``fsync=off``, ``synchronous_commit=off``): commits cost no disk flush, so the figures are
the client and SQL work, not the disk.

Example::

    catga bench eventstore-postgres --concurrency 1,16
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import msgspec

from catga.bench.harness import BenchCase, BenchEnv, BenchError, Op
from catga.messages import Event, message_name

__all__ = ("SUITE", "BenchPgOrderPlaced", "cases")

SUITE = "eventstore-postgres"


@message_name("bench.PgOrderPlaced")
class BenchPgOrderPlaced(msgspec.Struct, Event, frozen=True):
    """The appended event (about 100 bytes of JSON)."""

    order_id: str
    customer_id: str
    total: int
    currency: str


_EVENT = BenchPgOrderPlaced("order-000000000001", "customer-00000000042", 4200, "EUR")
_BODY = msgspec.json.encode(_EVENT)


@asynccontextmanager
async def _catga(env: BenchEnv, case: str, batch: int) -> AsyncIterator[Op]:
    from catga.postgres import PostgresEventStore
    from catga.protocols import NO_STREAM
    from catga.serialization import TypeRegistry

    url = await env.postgres_url()
    table = f"bench_{uuid.uuid4().hex[:8]}"
    size = max(2, env.max_concurrency)
    store = await PostgresEventStore.connect(
        url,
        table=table,
        registry=TypeRegistry("json", [BenchPgOrderPlaced]),
        min_size=size,
        max_size=size,
    )
    try:
        streams = [f"s{i}" for i in range(env.max_concurrency)]
        versions = [NO_STREAM] * env.max_concurrency
        events = [_EVENT] * batch
        if case == "read_10":
            for i, sid in enumerate(streams):
                versions[i] = await store.append(sid, [_EVENT] * 10, NO_STREAM)

            async def read(worker: int) -> None:
                if len(await store.read(streams[worker])) != 10:
                    raise BenchError("catga self-check: a stream did not read back 10 events")

            yield read
        else:

            async def append(worker: int) -> None:
                versions[worker] = await store.append(streams[worker], events, versions[worker])

            yield append
            stored = await store.read(streams[0])
            if [e.version for e in stored] != list(range(len(stored))):
                raise BenchError("catga self-check: versions of a benchmarked stream are not contiguous")
    finally:
        async with store.pool.acquire() as conn:
            for t in (table, store.streams_table, store.head_table):
                await conn.execute(f"DROP TABLE IF EXISTS {t}")
        await store.aclose()


@asynccontextmanager
async def _eventsourcing(env: BenchEnv, case: str, batch: int) -> AsyncIterator[Op]:
    try:
        from eventsourcing.persistence import StoredEvent
        from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
    except ImportError as exc:  # psycopg is the bench extra's
        raise BenchError(
            f"eventsourcing's PostgreSQL recorder needs psycopg: pip install 'catga[bench]' ({exc})"
        ) from exc

    url = urlsplit(await env.postgres_url())
    table = f"bench_es_{uuid.uuid4().hex[:8]}"
    size = max(2, env.max_concurrency)
    datastore = PostgresDatastore(
        dbname=url.path.lstrip("/") or "postgres",
        host=url.hostname or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password or "",
        pool_size=size,
        max_overflow=0,
        originator_id_type="text",
    )
    recorder = PostgresApplicationRecorder(datastore, events_table_name=table)
    try:
        await asyncio.to_thread(recorder.create_table)
        streams = [f"s{i}" for i in range(env.max_concurrency)]
        versions = [0] * env.max_concurrency  # eventsourcing's versions start at 1
        topic = "bench:PgOrderPlaced"

        def stored(sid: str, first: int, n: int) -> list[Any]:
            return [StoredEvent(sid, first + k, topic, _BODY) for k in range(n)]

        if case == "read_10":
            for sid in streams:
                await asyncio.to_thread(recorder.insert_events, stored(sid, 1, 10))

            def read_sync(worker: int) -> None:
                if len(recorder.select_events(streams[worker])) != 10:
                    raise BenchError("eventsourcing self-check: a stream did not read back 10 events")

            async def read(worker: int) -> None:
                await asyncio.to_thread(read_sync, worker)

            yield read
        else:

            def append_sync(worker: int) -> None:
                first = versions[worker] + 1
                recorder.insert_events(stored(streams[worker], first, batch))
                versions[worker] = first + batch - 1

            async def append(worker: int) -> None:
                await asyncio.to_thread(append_sync, worker)

            yield append
    finally:

        def drop() -> None:
            with datastore.get_connection() as conn, conn.cursor() as curs:
                curs.execute(f"DROP TABLE IF EXISTS {table}")
            datastore.close()

        await asyncio.to_thread(drop)


def _factory(impl: Any, case: str, batch: int) -> Any:
    def factory(env: BenchEnv) -> Any:
        return impl(env, case, batch)

    return factory


def cases(env: BenchEnv) -> list[BenchCase]:
    """``append_1``, ``append_10`` and ``read_10`` for catga and eventsourcing's PostgreSQL recorder."""
    out: list[BenchCase] = []
    for case, batch, note in (
        ("append_1", 1, "1 event, exact expected version, one stream per worker"),
        ("append_10", 10, "10 events in one append, exact expected version, one stream per worker"),
        ("read_10", 0, "read a whole 10-event stream, one stream per worker"),
    ):
        out.append(BenchCase(case, "catga", _factory(_catga, case, batch), note=note))
        out.append(
            BenchCase(
                case,
                "eventsourcing",
                _factory(_eventsourcing, case, batch),
                note=note + "; PostgresApplicationRecorder (psycopg 3), blocking calls in threads",
            )
        )
    return out
