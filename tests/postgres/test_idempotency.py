"""The IdempotencyStore contract on PostgreSQL, the inbox binding, and completing in a transaction."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

import catga
from catga import Command
from catga.errors import ConfigurationError
from catga.messages import Metadata
from catga.postgres import PostgresIdempotencyStore, PostgresInboxStore
from catga.protocols import ClaimStatus
from catga.testing.contracts.idempotency import IdempotencyStoreContract

pytestmark = pytest.mark.postgres


class TestPostgresIdempotencyStore(IdempotencyStoreContract):
    @pytest.fixture
    async def idempotency_store(self, pool: Any, unique_name: str) -> AsyncIterator[PostgresIdempotencyStore]:
        async with PostgresIdempotencyStore(pool, table=f"idem_{unique_name}") as store:
            yield store


class TestPostgresInboxStore(IdempotencyStoreContract):
    @pytest.fixture
    async def idempotency_store(self, pool: Any, unique_name: str) -> AsyncIterator[PostgresInboxStore]:
        async with PostgresInboxStore(pool, table=f"inbox_{unique_name}") as store:
            yield store


async def test_completing_in_the_handlers_transaction_commits_with_its_effects(
    pool: Any, unique_name: str
) -> None:
    store = PostgresInboxStore(pool, table=f"inbox_{unique_name}")
    effects = f"effects_{unique_name}"
    await pool.execute(f"CREATE TABLE {effects} (id text PRIMARY KEY)")
    assert (await store.claim("m-1", lock_ttl=30)).status == ClaimStatus.CLAIMED
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="crash"):
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {effects} VALUES ('m-1')")
                await store.complete("m-1", b"done", connection=conn)
                raise RuntimeError("crash before commit")
    again = await store.claim("m-1", lock_ttl=30)  # still just a live claim: not completed
    assert again.status == ClaimStatus.IN_PROGRESS
    await store.release("m-1")
    assert (await store.claim("m-1", lock_ttl=30)).status == ClaimStatus.CLAIMED
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"INSERT INTO {effects} VALUES ('m-1')")
        await store.complete("m-1", b"done", connection=conn)
    done = await store.claim("m-1", lock_ttl=30)
    assert done.status == ClaimStatus.COMPLETED and done.result == b"done"
    assert await pool.fetchval(f"SELECT count(*) FROM {effects}") == 1


async def test_expired_rows_are_purged(pool: Any, unique_name: str) -> None:
    store = PostgresIdempotencyStore(pool, table=f"idem_{unique_name}")
    await store.complete("old", b"x", ttl=-1.0)
    await store.complete("new", b"y", ttl=60.0)
    assert await store.purge_expired() == 1
    assert (await store.claim("new")).status == ClaimStatus.COMPLETED


def test_bad_table_names_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        PostgresIdempotencyStore(object(), table="x; DROP TABLE y")
    assert PostgresInboxStore(object()).table == "catga_inbox"
    assert PostgresIdempotencyStore(object()).table == "catga_idempotency"


@dataclass(frozen=True)
class Charge(Command[int]):
    amount: int


async def test_an_app_with_a_postgres_idempotency_url_deduplicates_commands(postgres_url: str) -> None:
    runs: list[int] = []
    for _ in range(2):  # two app instances: the second one sees the first one's record
        app = catga.App(idempotency_store=postgres_url)

        @app.handler
        async def charge(cmd: Charge) -> int:
            runs.append(cmd.amount)
            return len(runs)

        async with app:
            result = await app.send(Charge(5), metadata=Metadata(message_id=987654321))
            assert result.ok and result.value == 1
    assert runs == [5]  # the duplicate was answered from PostgreSQL, the handler ran once
