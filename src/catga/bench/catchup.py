"""Projection catch-up rate: events per second from an event store into a checkpointed read model.

Run ``python -m catga.bench.catchup [--events N] [--batch-size B]``: for each backend it appends ``N``
events (100 per append, over 50 streams), then times a :class:`~catga.eventsourcing.ProjectionRunner`
from its start until it has handled the last one, and prints events/s and the ratio to the in-memory
run of the same invocation. Servers are started on loopback (``CATGA_NATS_URL`` / ``CATGA_REDIS_URL``
/ ``CATGA_POSTGRES_URL`` point at your own).

Cases (events store → read model + checkpoints):

* ``memory``: memory store, an in-memory read model, ``MemoryCheckpointStore``.
* ``nats`` / ``redis``: that backend's store and checkpoint store, an in-memory read model.
* ``redis+postgres-tx``: Redis events into a PostgreSQL table written in one transaction with the
  checkpoint (``PostgresCheckpointStore(connection=...)``) -- the exactly-once read model.

A figure of one run on one machine: compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from catga.eventsourcing import MemoryCheckpointStore, Projection, ProjectionRunner, SaveCheckpoint, handles
from catga.eventsourcing.checkpoints import CheckpointStore
from catga.memory import MemoryEventStore
from catga.messages import Event, message_name
from catga.protocols import EventStore, StoredEvent
from catga.serialization import TypeRegistry

__all__ = ("Counted", "main", "measure")

PER_APPEND = 100
STREAMS = 50


@message_name("catga.bench.Counted")
class Counted(msgspec.Struct, Event, frozen=True):
    """The benchmark's event."""

    account: str
    amount: int


class _Totals(Projection):
    def __init__(self) -> None:
        self.totals: dict[str, int] = {}

    @handles(Counted)
    def _counted(self, event: Counted, stored: StoredEvent) -> None:
        self.totals[stored.stream_id] = self.totals.get(stored.stream_id, 0) + event.amount


class _PgTotals(Projection):
    def __init__(self, pool: Any, table: str) -> None:
        self.pool, self.table = pool, table
        self.pending: list[tuple[str, int, int]] = []

    @handles(Counted)
    def _counted(self, event: Counted, stored: StoredEvent) -> None:
        self.pending.append((stored.stream_id, stored.position, event.amount))

    async def commit(self, position: int, save: SaveCheckpoint) -> None:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.executemany(
                    f"INSERT INTO {self.table} (stream, position, amount) VALUES ($1, $2, $3)", self.pending
                )
                await save(connection=conn)
        finally:
            self.pending.clear()


async def _fill(store: EventStore, events: int) -> int:
    last = 0
    for n in range(0, events, PER_APPEND):
        batch = [Counted(f"a{n}", 1) for _ in range(min(PER_APPEND, events - n))]
        await store.append(f"acc-{(n // PER_APPEND) % STREAMS}", batch)
    for stored in await store.read_all(1):
        last = stored.position
    return last


async def measure(
    store: EventStore, projection: Projection, checkpoints: CheckpointStore, events: int, batch_size: int
) -> float:
    """Append ``events``, then time a runner catching up on them; return events per second."""
    last = await _fill(store, events)
    runner = ProjectionRunner(
        store, projection, checkpoints, f"catchup-{uuid.uuid4().hex[:8]}", batch_size=batch_size
    )
    start = time.perf_counter()
    async with runner:
        await runner.wait_for_position(last, timeout=600)
        elapsed = time.perf_counter() - start
    return events / elapsed


@contextlib.asynccontextmanager
async def _servers() -> AsyncIterator[Callable[[str], str]]:
    from catga.testing.postgres import PostgresServer
    from catga.testing.servers import NatsServer, RedisServer, url_from_env

    started: list[Any] = []
    urls: dict[str, str] = {}
    for kind, env, cls in (
        ("nats", "CATGA_NATS_URL", NatsServer),
        ("redis", "CATGA_REDIS_URL", RedisServer),
        ("postgres", "CATGA_POSTGRES_URL", PostgresServer),
    ):
        url = url_from_env(env)
        if url is None:
            server = cls()
            await asyncio.to_thread(server.start)
            started.append(server)
            url = server.url
        urls[kind] = url
    try:
        yield urls.__getitem__
    finally:
        for server in started:
            await asyncio.to_thread(server.stop)


async def main(events: int, batch_size: int) -> dict[str, float]:
    """Run every case; return events/s per case (and print a table)."""
    import asyncpg

    from catga.nats import NatsCheckpointStore, NatsConnection, NatsEventStore
    from catga.postgres import PostgresCheckpointStore
    from catga.redis import RedisCheckpointStore, RedisClient, RedisEventStore

    registry = TypeRegistry(types=[Counted])
    rates: dict[str, float] = {}
    rates["memory"] = await measure(
        MemoryEventStore(), _Totals(), MemoryCheckpointStore(), events, batch_size
    )
    async with _servers() as url:
        name = f"catchup{uuid.uuid4().hex[:8]}"
        async with await NatsConnection.connect(url("nats")) as conn:
            store = NatsEventStore(conn, stream=name, prefix=f"{name}.ev", registry=registry, storage="file")
            async with store, NatsCheckpointStore(conn, bucket=name) as checkpoints:
                rates["nats"] = await measure(store, _Totals(), checkpoints, events, batch_size)
        async with RedisClient.from_url(url("redis"), prefix=name) as client:
            redis_store = RedisEventStore(client, registry=registry)
            rates["redis"] = await measure(
                redis_store, _Totals(), RedisCheckpointStore(client), events, batch_size
            )
        async with RedisClient.from_url(url("redis"), prefix=name + "pg") as client:
            pool = await asyncpg.create_pool(url("postgres"), min_size=1, max_size=2)
            try:
                table = f"totals_{name}"
                await pool.execute(f"CREATE TABLE {table} (stream text, position bigint, amount int)")
                async with PostgresCheckpointStore(pool, table=f"ckpt_{name}") as pg_checkpoints:
                    rates["redis+postgres-tx"] = await measure(
                        RedisEventStore(client, registry=registry),
                        _PgTotals(pool, table),
                        pg_checkpoints,
                        events,
                        batch_size,
                    )
            finally:
                await pool.close()
    base = rates["memory"]
    print(f"projection catch-up, {events} events, batch_size {batch_size} (one run, this machine)")
    print(f"{'case':<20} {'events/s':>12} {'vs memory':>10}")
    for case, rate in rates.items():
        print(f"{case:<20} {rate:>12,.0f} {rate / base:>10.3f}")
    return rates


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.batch_size))
