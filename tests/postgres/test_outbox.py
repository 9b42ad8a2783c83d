"""The OutboxStore contract on PostgreSQL, plus what only it can do: an outbox in your transaction."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from catga.errors import ConfigurationError
from catga.memory import MemoryBroker, MemoryTransport
from catga.messages import Event, Metadata, message_name
from catga.outbox import OutboxRelay
from catga.postgres import PostgresOutboxStore
from catga.protocols import ClaimStatus, OutboxMessage, OutboxStatus
from catga.serialization import TypeRegistry
from catga.testing.contracts.outbox import OutboxStoreContract

pytestmark = pytest.mark.postgres


class TestPostgresOutboxStore(OutboxStoreContract):
    @pytest.fixture
    async def outbox_store(self, pool: Any, unique_name: str) -> AsyncIterator[PostgresOutboxStore]:
        async with PostgresOutboxStore(pool, table=f"outbox_{unique_name}") as store:
            yield store


@message_name("pg.Paid")
class Paid(msgspec.Struct, Event, frozen=True):
    order_id: str


def _message(order_id: str, n: int) -> OutboxMessage:
    md = Metadata(message_id=5000 + n, created_at=time.time() + n * 1e-6)
    return OutboxMessage(
        id=str(md.message_id),
        destination="pg.Paid",
        type_name="pg.Paid",
        body=msgspec.json.encode(Paid(order_id)),
        headers=md.to_headers("pg.Paid"),
        created_at=md.created_at,
    )


async def _orders_table(pool: Any, name: str) -> str:
    table = f"orders_{name}"
    await pool.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, status text NOT NULL)")
    return table


async def test_the_outbox_row_commits_and_rolls_back_with_the_callers_transaction(
    pool: Any, unique_name: str
) -> None:
    orders = await _orders_table(pool, unique_name)
    outbox = PostgresOutboxStore(pool, table=f"outbox_{unique_name}")
    await outbox.ensure_schema()  # at start-up: no DDL inside the transactions below
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="payment provider down"):
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {orders} VALUES ('o-1', 'paid')")
                await outbox.add([_message("o-1", 1)], connection=conn)
                raise RuntimeError("payment provider down")  # rolls back the order AND the event
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {orders} VALUES ('o-2', 'paid')")
            await outbox.add([_message("o-2", 2)], connection=conn)
    assert await pool.fetchval(f"SELECT count(*) FROM {orders}") == 1
    assert await outbox.get("5001") is None  # rolled back with the order
    kept = await outbox.get("5002")
    assert kept is not None and kept.status == OutboxStatus.PENDING


async def test_the_relay_publishes_committed_rows_only(pool: Any, unique_name: str) -> None:
    registry = TypeRegistry("json", [Paid])
    transport = MemoryTransport(broker=MemoryBroker(), registry=registry)
    got: list[str] = []

    async def on_paid(event: Paid, metadata: Metadata) -> None:
        got.append(event.order_id)

    await transport.subscribe(Paid, on_paid, group="billing")
    outbox = PostgresOutboxStore(pool, table=f"outbox_{unique_name}")
    await outbox.ensure_schema()
    async with OutboxRelay(outbox, transport, poll_interval=0.05), pool.acquire() as conn:
        async with conn.transaction():
            await outbox.add([_message("o-3", 3)], connection=conn)
            await asyncio.sleep(0.3)  # uncommitted: the relay's polls cannot see it
            assert got == []
        async with asyncio.timeout(10):
            while got != ["o-3"]:  # noqa: ASYNC110 - waiting for a consumer
                await asyncio.sleep(0.02)
    assert (await outbox.get("5003")).status == OutboxStatus.PUBLISHED  # type: ignore[union-attr]
    await transport.aclose()


async def test_concurrent_relays_skip_each_others_rows(pool: Any, unique_name: str) -> None:
    outbox = PostgresOutboxStore(pool, table=f"outbox_{unique_name}")
    await outbox.add([_message(f"o-{n}", n) for n in range(60)])
    batches = await asyncio.gather(*(outbox.fetch_pending(25, lease=30.0) for _ in range(4)))
    ids = [m.id for batch in batches for m in batch]
    assert len(ids) == len(set(ids)) == 60  # every row leased once, none twice


async def test_bad_table_names_are_refused(pool: Any) -> None:
    for bad in ("orders; DROP TABLE x", "a-b", "1abc", "a.b.c", ""):
        with pytest.raises(ConfigurationError):
            PostgresOutboxStore(pool, table=bad)


async def test_connect_owns_and_closes_its_pool(postgres_url: str, unique_name: str) -> None:
    store = await PostgresOutboxStore.connect(
        postgres_url, table=f"outbox_{unique_name}", min_size=1, max_size=2
    )
    await store.add([_message("o-9", 9)])
    assert await store.count() == 1
    await store.aclose()
    assert store.pool.is_closing()


async def test_an_app_with_a_postgres_outbox_url_relays_exported_events(postgres_url: str) -> None:
    import catga

    registry = TypeRegistry("json", [Paid])
    broker = MemoryBroker()
    publisher = catga.App(
        transport=MemoryTransport(broker=broker, registry=registry),
        outbox=postgres_url,
        name="pub",
        registry=registry,
    )
    consumer = catga.App(
        transport=MemoryTransport(broker=broker, registry=registry), name="sub", registry=registry
    )
    got: list[str] = []

    @consumer.handler
    async def on_paid(event: Paid) -> None:
        got.append(event.order_id)

    publisher.export(Paid)
    consumer.consume(Paid)
    async with consumer, publisher:
        assert type(publisher.outbox).__name__ == "PostgresOutboxStore"
        assert (await publisher.publish(Paid("o-pg"))).ok
        async with asyncio.timeout(10):
            while got != ["o-pg"]:  # noqa: ASYNC110 - waiting for a consumer
                await asyncio.sleep(0.02)


async def test_an_app_shares_one_pool_refuses_calls_before_start_and_starts_again(postgres_url: str) -> None:
    import catga
    from catga.postgres import PgPool

    app = catga.App(transport=MemoryTransport(), idempotency_store=postgres_url, outbox=postgres_url)
    [pool] = app.backends.connections  # one pool for the URL, shared by both stores
    assert isinstance(pool, PgPool) and not pool.opened
    assert app.outbox.pool is pool and app.idempotency_store.pool is pool  # type: ignore[union-attr,attr-defined]
    with pytest.raises(
        ConfigurationError, match=r"PostgreSQL pool for postgresql://.* is not open: App\.start"
    ):
        await app.outbox.count(OutboxStatus.PENDING)  # type: ignore[union-attr]
    for _ in range(2):  # a restart opens a new pool
        async with app:
            assert pool.opened
            assert (await app.idempotency_store.claim(f"k-{uuid.uuid4().hex}")).status == ClaimStatus.CLAIMED
            assert (await app.health()).ok
        assert not pool.opened
        with pytest.raises(ConfigurationError, match="is not open"):
            await app.idempotency_store.claim("k")


async def test_app_health_pings_the_postgres_outbox(postgres_url: str) -> None:
    import catga

    app = catga.App(transport=MemoryTransport(), outbox=postgres_url, name="health")
    async with app:
        report = await app.health()
    checks = {c.name: c for c in report.checks}
    assert report.ok and checks["postgres catga_outbox"].ok and "outbox relay" in checks
