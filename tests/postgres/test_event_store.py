"""The EventStore contract on PostgreSQL, plus what only it promises: a global order that never skips
an event committed late, and appends inside your own transaction."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from catga.errors import ConcurrencyError, ConfigurationError
from catga.postgres import PostgresEventStore
from catga.protocols import NO_STREAM, StoredEvent
from catga.testing.contracts._util import WAIT, unique
from catga.testing.contracts.event_store import EventStoreContract
from catga.testing.contracts.messages import ContractOrderPlaced, contract_registry

pytestmark = pytest.mark.postgres


class TestPostgresEventStore(EventStoreContract):
    @pytest.fixture
    async def event_store(self, pool: Any, unique_name: str) -> AsyncIterator[PostgresEventStore]:
        store = PostgresEventStore(
            pool, table=f"events_{unique_name}", registry=contract_registry(), poll_interval=0.2
        )
        async with store:
            yield store


@pytest.fixture
async def store(pool: Any, unique_name: str) -> AsyncIterator[PostgresEventStore]:
    # A long poll interval: a live subscriber that keeps up does so through LISTEN/NOTIFY.
    store = PostgresEventStore(
        pool, table=f"ev_{unique_name}", registry=contract_registry(), poll_interval=30
    )
    async with store:
        yield store


async def _waiting_for_lock(pool: Any, pid: int) -> None:
    """Return once backend ``pid`` waits for a lock (a condition, polled, with a generous deadline)."""
    async with asyncio.timeout(WAIT):
        while True:
            kind = await pool.fetchval("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid)
            if kind == "Lock":
                return
            await asyncio.sleep(0.01)


async def _collect(it: AsyncIterator[StoredEvent], n: int, into: list[StoredEvent]) -> None:
    while len(into) < n:
        into.append(await anext(it))


async def test_a_late_commit_is_never_skipped_by_a_live_subscriber(
    store: PostgresEventStore, pool: Any
) -> None:
    """Transaction A appends first and commits last; B appends while A is open and commits first
    as far as it can. A live follower must see both, A's events first, and read_all must agree."""
    seen: list[StoredEvent] = []
    it = store.subscribe_all()
    follower = asyncio.ensure_future(_collect(it, 3, seen))
    conn_a = await pool.acquire()
    conn_b = await pool.acquire()
    try:
        tx_a = conn_a.transaction()
        await tx_a.start()
        await store.append("a", [ContractOrderPlaced("a", 0), ContractOrderPlaced("a", 1)], connection=conn_a)

        async def b() -> int:
            async with conn_b.transaction():
                return await store.append("b", [ContractOrderPlaced("b", 0)], connection=conn_b)

        b_task = asyncio.ensure_future(b())
        await _waiting_for_lock(pool, conn_b.get_server_pid())  # B is behind A, not ahead of it
        assert not b_task.done()
        assert seen == [] and await store.read_all() == []
        await tx_a.commit()
        async with asyncio.timeout(WAIT):
            assert await b_task == 0
            await follower
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await it.aclose()  # type: ignore[attr-defined]
        await pool.release(conn_a)
        await pool.release(conn_b)
    assert [(e.stream_id, e.version) for e in seen] == [("a", 0), ("a", 1), ("b", 0)]
    assert [e.position for e in seen] == sorted({e.position for e in seen})
    assert await store.read_all() == seen  # a stable order: the live one and the stored one agree


async def test_a_rolled_back_append_leaves_no_trace_and_blocks_nobody(
    store: PostgresEventStore, pool: Any
) -> None:
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await store.append("x", [ContractOrderPlaced("x", 0)], connection=conn)
        other = asyncio.ensure_future(store.append("y", [ContractOrderPlaced("y", 0)]))
        await _waiting_for_lock(pool, await _pid_of_other(pool, conn))
        await tx.rollback()
    async with asyncio.timeout(WAIT):
        assert await other == 0
    feed = await store.read_all()
    assert [(e.stream_id, e.position) for e in feed] == [("y", 1)]
    assert await store.version("x") == -1


async def _pid_of_other(pool: Any, conn: Any) -> int:
    """The pid of the pool connection (not ``conn``) that is running an append."""
    async with asyncio.timeout(WAIT):
        while True:
            pid = await pool.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE pid <> $1 AND pid <> pg_backend_pid() "
                "AND query LIKE 'WITH head AS%' AND state = 'active'",
                conn.get_server_pid(),
            )
            if pid is not None:
                return int(pid)
            await asyncio.sleep(0.01)


async def test_concurrent_transactions_committing_in_random_order_reach_the_follower_whole(
    store: PostgresEventStore, pool: Any
) -> None:
    """12 transactions append to 4 streams and commit after random work; some roll back. The live
    follower sees exactly the committed events, each once, in the order read_all gives later."""
    seen: list[StoredEvent] = []
    committed: list[tuple[str, int]] = []
    it = store.subscribe_all()
    rng = random.Random(7)

    async def writer(w: int) -> None:
        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                await conn.execute("SELECT pg_sleep($1)", rng.random() * 0.02)
                sid = f"s{w % 4}"
                await store.append(
                    sid, [ContractOrderPlaced(sid, w), ContractOrderPlaced(sid, -w)], connection=conn
                )
                await conn.execute("SELECT pg_sleep($1)", rng.random() * 0.02)
            except BaseException:
                await tx.rollback()
                raise
            if w % 5 == 4:
                await tx.rollback()
            else:
                await tx.commit()
                committed.append((f"s{w % 4}", w))

    async with asyncio.timeout(WAIT * 2):
        await asyncio.gather(*(writer(w) for w in range(12)))
        await _collect(it, 2 * len(committed), seen)
    await it.aclose()  # type: ignore[attr-defined]
    assert sorted(
        (e.stream_id, e.data.total) for e in seen if e.data.total >= 0 and e.version % 2 == 0
    ) == sorted(committed)
    assert len(seen) == 2 * len(committed)
    assert [e.position for e in seen] == sorted({e.position for e in seen})
    assert await store.read_all() == seen
    for sid in {s for s, _ in committed}:
        assert [e.version for e in await store.read(sid)] == list(
            range(2 * sum(s == sid for s, _ in committed))
        )


async def test_append_in_your_transaction_commits_or_rolls_back_with_it(
    store: PostgresEventStore, pool: Any
) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                assert await store.append("o", [ContractOrderPlaced("o", 1)], NO_STREAM, connection=conn) == 0
                assert [e.version for e in await store.read("o", connection=conn)] == [0]
                assert await store.read("o") == []  # not visible outside before the commit
                raise RuntimeError("boom")
        assert await store.version("o") == -1
        async with conn.transaction():
            await store.append("o", [ContractOrderPlaced("o", 1)], NO_STREAM, connection=conn)
            await store.append("o", [ContractOrderPlaced("o", 2)], 0, connection=conn)
    assert [e.data.total for e in await store.read("o")] == [1, 2]


async def test_a_conflict_in_your_transaction_leaves_it_usable(store: PostgresEventStore, pool: Any) -> None:
    await store.append("o", [ContractOrderPlaced("o", 1)])
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(ConcurrencyError) as info:
            await store.append("o", [ContractOrderPlaced("o", 2)], NO_STREAM, connection=conn)
        assert info.value.actual_version == 0
        assert await store.append("o", [ContractOrderPlaced("o", 2)], 0, connection=conn) == 1  # no abort


async def test_appending_in_a_transaction_before_the_tables_exist_is_refused(
    pool: Any, unique_name: str
) -> None:
    store = PostgresEventStore(pool, table=f"late_{unique_name}", registry=contract_registry())
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(ConfigurationError, match="ensure_schema"):
            await store.append("o", [ContractOrderPlaced("o", 1)], connection=conn)


async def test_closing_the_store_ends_a_parked_subscriber(
    pool: Any, postgres_url: str, unique_name: str
) -> None:
    store = await PostgresEventStore.connect(
        postgres_url, table=f"own_{unique_name}", registry=contract_registry(), min_size=1, max_size=2
    )
    await store.append("o", [ContractOrderPlaced("o", 1)])
    it = store.subscribe_all()
    assert (await anext(it)).version == 0  # parked at a yield, holding a pool connection
    async with asyncio.timeout(WAIT):
        await store.aclose()
    with pytest.raises(StopAsyncIteration):
        async with asyncio.timeout(WAIT):
            await anext(it)


async def test_head_row_orders_positions_across_streams(store: PostgresEventStore) -> None:
    assert await store.last_position() == 0
    await store.append("a", [ContractOrderPlaced("a", 0)] * 3)
    await store.append("b", [ContractOrderPlaced("b", 0)])
    assert await store.last_position() == 4
    assert [e.position for e in await store.read_all()] == [1, 2, 3, 4]


async def test_an_app_opens_its_event_store_from_a_postgresql_url(postgres_url: str) -> None:
    import catga

    app = catga.App(store=postgres_url, registry=contract_registry(), worker_id=1)
    sid = unique()
    async with app:
        assert await app.store.append(sid, [ContractOrderPlaced(sid, 1)], NO_STREAM) == 0
        assert [e.data for e in await app.store.read(sid)] == [ContractOrderPlaced(sid, 1)]
        assert isinstance(getattr(app.store, "target", app.store), PostgresEventStore)  # a proxy, or not


async def test_a_subscriber_whose_connection_is_killed_resumes_without_a_gap_or_a_repeat(
    store: PostgresEventStore, pool: Any
) -> None:
    await store.append("k", [ContractOrderPlaced("k", i) for i in range(3)])
    it = store.subscribe_all()
    seen: list[StoredEvent] = []
    try:
        async with asyncio.timeout(WAIT):
            await _collect(it, 3, seen)
        (conn,) = store._listeners
        pid = conn.get_server_pid()
        assert await pool.fetchval("SELECT pg_terminate_backend($1)", pid)
        await store.append("k", [ContractOrderPlaced("k", i) for i in range(3, 6)])
        async with asyncio.timeout(WAIT * 2):
            await _collect(it, 6, seen)
    finally:
        await it.aclose()  # type: ignore[attr-defined]
    assert [e.data.total for e in seen] == list(range(6))
    assert seen == await store.read_all()
    assert store._listeners == set()  # the killed connection went back to the pool, the new one too
