"""One PostgreSQL transaction for a handler's events, outbox rows and idempotency record.

The crash tests run the handler in a child process (``uow_child.py``) that SIGKILLs itself between
two writes: nothing may be committed, and the redelivery runs the handler once on a clean slate.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

import catga
from catga.errors import ConfigurationError
from catga.memory import MemoryTransport
from catga.messages import Command, Event, Metadata, message_name
from catga.postgres import (
    PostgresEventStore,
    PostgresIdempotencyStore,
    PostgresOutboxStore,
    PostgresUnitOfWork,
    current_connection,
)
from catga.protocols import NO_STREAM, ClaimStatus, OutboxMessage
from catga.serialization import TypeRegistry

pytestmark = pytest.mark.postgres

HERE = Path(__file__).parent
WRITES = ("claim", "append", "publish", "state", "complete")


@message_name("uowt.Pay")
class Pay(msgspec.Struct, Command[int], frozen=True):
    account: str
    amount: int


@message_name("uowt.Paid")
class Paid(msgspec.Struct, Event, frozen=True):
    account: str
    amount: int


@pytest.fixture
async def tables(pool: Any, unique_name: str) -> AsyncIterator[str]:
    await pool.execute(f"CREATE TABLE state_{unique_name} (order_id text PRIMARY KEY, n int NOT NULL)")
    yield unique_name


async def _counts(pool: Any, name: str) -> dict[str, int]:
    out = {}
    for kind, table in (("events", "ev"), ("outbox", "ob"), ("idempotency", "idem"), ("state", "state")):
        exists = await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{table}_{name}")
        out[kind] = int(await pool.fetchval(f"SELECT count(*) FROM {table}_{name}")) if exists else 0
    return out


async def _child(url: str, name: str, message_id: int, crash_at: str) -> tuple[int, dict[str, Any]]:
    env = dict(os.environ)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "uow_child.py"),
        url,
        name,
        str(message_id),
        crash_at,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    if proc.returncode == 0:
        return 0, json.loads(out.decode().strip().splitlines()[-1])
    assert proc.returncode == -9, err.decode()[-3000:]
    return proc.returncode, {}


@pytest.mark.parametrize("crash_at", WRITES)
async def test_a_crash_after_any_write_commits_nothing_and_the_redelivery_applies_once(
    pool: Any, postgres_url: str, tables: str, crash_at: str
) -> None:
    rc, _ = await _child(postgres_url, tables, 7001, crash_at)
    assert rc == -9, "the child did not die where it was told to"
    assert await _counts(pool, tables) == {"events": 0, "outbox": 0, "idempotency": 0, "state": 0}
    rc, report = await _child(postgres_url, tables, 7001, "none")  # the redelivery
    assert rc == 0 and report == {"ran": 1, "ok": True, "value": 0, "error": None}
    assert await _counts(pool, tables) == {"events": 1, "outbox": 1, "idempotency": 1, "state": 1}


async def test_a_redelivery_of_a_committed_message_is_not_applied_again(
    pool: Any, postgres_url: str, tables: str
) -> None:
    rc, report = await _child(postgres_url, tables, 7002, "none")
    assert rc == 0 and report["ran"] == 1
    rc, report = await _child(postgres_url, tables, 7002, "none")
    assert rc == 0 and report == {"ran": 0, "ok": True, "value": 0, "error": None}  # the stored Result
    assert await _counts(pool, tables) == {"events": 1, "outbox": 1, "idempotency": 1, "state": 1}


# -- in process ----------------------------------------------------------------------------------


@pytest.fixture
def registry() -> TypeRegistry:
    return TypeRegistry(types=[Pay, Paid])


async def test_the_stores_join_the_block_and_commit_or_roll_back_with_it(
    pool: Any, unique_name: str, registry: TypeRegistry
) -> None:
    uow = PostgresUnitOfWork(pool)
    store = PostgresEventStore(pool, table=f"ev_{unique_name}", registry=registry)
    outbox = PostgresOutboxStore(pool, table=f"ob_{unique_name}")
    idem = PostgresIdempotencyStore(pool, table=f"idem_{unique_name}")
    for s in (store, outbox, idem):
        await s.ensure_schema()
    message = OutboxMessage(id="m-1", destination="d", type_name="t", body=b"x")

    async def writes() -> None:
        assert await idem.claim("k-1") == catga.protocols.Claim(ClaimStatus.CLAIMED)
        await store.append("acc", [Paid("acc", 1)], NO_STREAM)
        await outbox.add([message])
        await idem.complete("k-1", b"r")
        assert await current_connection().fetchval(f"SELECT count(*) FROM ev_{unique_name}") == 1

    with pytest.raises(RuntimeError):
        async with uow() as conn:
            assert uow.active and current_connection() is conn
            await writes()
            raise RuntimeError("boom")
    assert not uow.active
    assert await store.read("acc") == [] and await outbox.get("m-1") is None
    assert (await idem.claim("k-1")).status == ClaimStatus.CLAIMED
    await idem.release("k-1")
    async with uow(), uow():  # the inner one joins the outer one
        await writes()
    assert [e.data for e in await store.read("acc")] == [Paid("acc", 1)]
    assert await outbox.get("m-1") is not None
    assert (await idem.claim("k-1")).status == ClaimStatus.COMPLETED


async def test_current_connection_outside_a_unit_of_work_says_what_to_do() -> None:
    with pytest.raises(ConfigurationError, match="unit_of_work"):
        current_connection()


async def test_a_store_on_another_pool_does_not_join(pool: Any, postgres_url: str, unique_name: str) -> None:
    import asyncpg

    other = await asyncpg.create_pool(postgres_url, min_size=1, max_size=2)
    try:
        outbox = PostgresOutboxStore(other, table=f"ob_{unique_name}")
        await outbox.ensure_schema()
        with pytest.raises(RuntimeError):
            async with PostgresUnitOfWork(pool)():
                await outbox.add([OutboxMessage(id="m-2", destination="d", type_name="t", body=b"x")])
                raise RuntimeError("boom")
        assert await outbox.get("m-2") is not None  # its own transaction: committed at once
    finally:
        await other.close()


async def test_an_app_handler_commits_events_outbox_and_result_together(
    pool: Any, unique_name: str, registry: TypeRegistry
) -> None:
    store = PostgresEventStore(pool, table=f"ev_{unique_name}", registry=registry)
    outbox = PostgresOutboxStore(pool, table=f"ob_{unique_name}")
    app = catga.App(
        MemoryTransport(registry=registry),
        store=store,
        outbox=outbox,
        idempotency_store=PostgresIdempotencyStore(pool, table=f"idem_{unique_name}"),
        registry=registry,
        unit_of_work=PostgresUnitOfWork(pool),
    )
    app.export(Paid)
    calls: list[int] = []

    @app.handler
    async def pay(cmd: Pay, ctx: catga.Context) -> int:
        calls.append(cmd.amount)
        version = await store.append(cmd.account, [Paid(cmd.account, cmd.amount)])
        (await ctx.publish(Paid(cmd.account, cmd.amount))).unwrap()
        if cmd.amount < 0:
            raise ValueError("negative")
        return version

    async with app:
        bad = await app.send(Pay("a", -1))
        assert not bad.ok and calls == [-1]
        assert await store.read("a") == [] and await outbox.count() == 0  # rolled back whole
        md = Metadata(message_id=99_001)
        first = await app.send(Pay("a", 5), metadata=md)
        again = await app.send(Pay("a", 5), metadata=md)
    assert first.ok and first.value == 0 and again.ok and again.value == 0
    assert calls == [-1, 5]  # the duplicate got the stored result, the handler did not run again
    assert [e.data for e in await store.read("a")] == [Paid("a", 5)]
    published = await pool.fetch(f"SELECT id FROM ob_{unique_name}")
    assert len(published) == 1  # the exported event's row, written by catga in the handler's transaction


@pytest.mark.nats
async def test_app_inbox_becomes_the_transports_exactly_once_inbox(
    pool: Any, nats_url: str, unique_name: str
) -> None:
    from catga.postgres import PostgresInboxStore

    inbox = PostgresInboxStore(pool, table=f"inbox_{unique_name}")
    app = catga.App(transport=f"{nats_url}?prefix={unique_name}&storage=memory", inbox=inbox, worker_id=1)
    async with app:
        transport = getattr(app.transport, "target", app.transport)  # a late-bound proxy, or not
        assert transport.inbox is inbox
        assert await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", f"inbox_{unique_name}")


async def test_app_inbox_needs_a_transport_that_takes_one(pool: Any) -> None:
    from catga.postgres import PostgresInboxStore

    app = catga.App(MemoryTransport(), inbox=PostgresInboxStore(pool), worker_id=1)
    with pytest.raises(ConfigurationError, match="inbox"):
        await app.start()


async def test_the_relay_is_woken_after_the_commit_never_before_nor_after_a_rollback(
    pool: Any, unique_name: str
) -> None:
    outbox = PostgresOutboxStore(pool, table=f"ob_{unique_name}")
    await outbox.ensure_schema()
    uow = PostgresUnitOfWork(pool)
    woken: list[int] = []

    async def visible_rows() -> int:
        return int(await pool.fetchval(f"SELECT count(*) FROM ob_{unique_name}"))

    async with uow():
        await outbox.add([OutboxMessage(id="m-1", destination="d", type_name="t", body=b"x")])
        outbox.notify_when_visible(lambda: woken.append(1))
        assert woken == [] and await visible_rows() == 0  # a relay woken now would find nothing
    assert woken == [1] and await visible_rows() == 1
    with pytest.raises(RuntimeError):
        async with uow():
            outbox.notify_when_visible(lambda: woken.append(2))
            raise RuntimeError("boom")
    assert woken == [1]
    outbox.notify_when_visible(lambda: woken.append(3))  # no unit of work: at once
    assert woken == [1, 3]


async def test_each_retry_of_a_handler_is_a_fresh_transaction(
    pool: Any, unique_name: str, registry: TypeRegistry
) -> None:
    from catga.errors import RetryableError

    store = PostgresEventStore(pool, table=f"ev_{unique_name}", registry=registry)
    app = catga.App(
        store=store,
        idempotency_store=PostgresIdempotencyStore(pool, table=f"idem_{unique_name}"),
        registry=registry,
        unit_of_work=PostgresUnitOfWork(pool),
        worker_id=1,
    )
    attempts: list[int] = []

    @app.handler
    async def pay(cmd: Pay, ctx: catga.Context) -> int:
        attempts.append(await store.version(cmd.account))
        version = await store.append(cmd.account, [Paid(cmd.account, cmd.amount)], NO_STREAM)
        if len(attempts) == 1:
            raise RetryableError("the first attempt fails after its write")
        return version

    async with app:
        result = await app.send(Pay("r", 3))
    assert result.ok and result.value == 0
    assert attempts == [-1, -1]  # the second attempt did not see the first one's event: rolled back
    assert [e.data for e in await store.read("r")] == [Paid("r", 3)]


def test_an_inbox_without_a_transport_is_refused() -> None:
    from catga.postgres import PostgresInboxStore

    with pytest.raises(ConfigurationError, match="no transport"):
        catga.App(inbox=PostgresInboxStore(object()))


def test_a_unit_of_work_beside_your_own_behaviors_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"unit_of_work\.behavior\(\)"):
        catga.App(unit_of_work=PostgresUnitOfWork(object()), behaviors=[])
