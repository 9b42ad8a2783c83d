"""One projection owner across runners, on every backend's lock and checkpoint store: a stale owner's
commit is refused by the real server, and the read model gets every event exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from es_domain import Deposited

from catga.eventsourcing import CheckpointStore, Projection, ProjectionRunner, SaveCheckpoint, handles
from catga.memory.event_store import MemoryEventStore
from catga.protocols import DistributedLock, EventStore, Lease, StoredEvent
from catga.serialization import TypeRegistry
from catga.testing.contracts._util import eventually

Parts = tuple[EventStore, DistributedLock, CheckpointStore]
OpenParts = Callable[[], Awaitable[Parts]]


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("nats", marks=pytest.mark.nats),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def open_parts(request: pytest.FixtureRequest, unique_name: str) -> AsyncIterator[OpenParts]:
    """Opens (event store, lock, checkpoint store) on one isolated namespace, like one process would."""
    closers: list[Any] = []
    registry = TypeRegistry(types=[Deposited])
    shared_memory = MemoryEventStore()  # PostgreSQL has no event store here: events in memory

    async def open_() -> Parts:
        parts: Parts
        if request.param == "redis":
            from catga.redis import RedisCheckpointStore, RedisClient, RedisEventStore, RedisLock

            client = RedisClient.from_url(request.getfixturevalue("redis_url"), prefix=unique_name)
            parts = (
                RedisEventStore(client, registry=registry),
                RedisLock(client),
                RedisCheckpointStore(client),
            )
            closers.extend([*parts, client])
        elif request.param == "nats":
            from catga.nats import NatsCheckpointStore, NatsConnection, NatsEventStore, NatsLock

            conn = await NatsConnection.connect(request.getfixturevalue("nats_url"))
            parts = (
                NatsEventStore(
                    conn, stream=unique_name, prefix=f"{unique_name}.ev", registry=registry, storage="memory"
                ),
                NatsLock(conn, bucket=f"{unique_name}_locks", storage="memory"),
                NatsCheckpointStore(conn, bucket=f"{unique_name}_ckpt", storage="memory"),
            )
            closers.extend([*parts, conn])
        else:
            import asyncpg

            from catga.postgres import PostgresCheckpointStore, PostgresLock

            pool = await asyncpg.create_pool(request.getfixturevalue("postgres_url"), min_size=1, max_size=4)
            parts = (
                shared_memory,
                PostgresLock(pool, table=f"locks_{unique_name}"),
                PostgresCheckpointStore(pool, table=f"ckpt_{unique_name}"),
            )
            closers.extend([parts[1], parts[2], pool])
        return parts

    yield open_
    for obj in reversed(closers):
        await (obj.close() if hasattr(obj, "expire_connections") else obj.aclose())


class NoRenewLock:
    """Leases never renewed: an owner blocked past its ttl loses the lease (a GC or swap pause)."""

    def __init__(self, lock: DistributedLock) -> None:
        self.lock = lock

    async def acquire(
        self, key: str, *, ttl: float = 30.0, wait: float = 0.0, auto_renew: bool = False
    ) -> Lease:
        return await self.lock.acquire(key, ttl=ttl, wait=wait)

    async def aclose(self) -> None:
        await self.lock.aclose()


class Committed(Projection):
    """Rows become visible only when the fenced checkpoint save succeeded (a transactional model)."""

    def __init__(self, rows: list[int], block_at: int | None = None) -> None:
        self.rows = rows
        self.pending: list[int] = []
        self.block_at = block_at
        self.blocked = asyncio.Event()
        self.unblock = asyncio.Event()

    @handles(Deposited)
    async def _deposited(self, event: Deposited, stored: StoredEvent) -> None:
        if stored.position == self.block_at:
            self.block_at = None
            self.blocked.set()
            await self.unblock.wait()
        self.pending.append(stored.position)

    async def commit(self, position: int, save: SaveCheckpoint) -> None:
        await save()
        self.rows.extend(self.pending)
        self.pending.clear()

    async def discard(self) -> None:
        self.pending.clear()


async def test_a_paused_owner_is_fenced_off_by_the_server(open_parts: OpenParts) -> None:
    store_a, lock_a, checkpoints_a = await open_parts()
    store_b, lock_b, checkpoints_b = await open_parts()
    for n in range(8):
        await store_a.append(f"acc-{n % 3}", [Deposited(n + 1)])
    positions = [e.position for e in await store_a.read_all()]
    rows: list[int] = []
    stale = Committed(rows, block_at=positions[2])
    a = ProjectionRunner(store_a, stale, checkpoints_a, "owned", lock=NoRenewLock(lock_a), lease_ttl=0.5)
    b = ProjectionRunner(store_b, Committed(rows), checkpoints_b, "owned", lock=lock_b, lease_ttl=30)
    a.start()
    await asyncio.wait_for(stale.blocked.wait(), 20)
    b.start()
    await b.wait_for_position(positions[-1], timeout=30)
    assert a.fencing_token is not None and b.fencing_token is not None
    assert b.fencing_token > a.fencing_token
    stale.unblock.set()
    await eventually(lambda: _true(not a.owner), timeout=20, what="the stale owner stands by")
    await asyncio.gather(a.stop(), b.stop())
    assert sorted(rows) == positions and len(rows) == len(positions)  # none skipped, none twice
    assert await checkpoints_b.get("owned") == positions[-1]


async def _true(value: bool) -> bool:
    return value
