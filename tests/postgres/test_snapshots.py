"""The snapshot and checkpoint contracts on PostgreSQL, plus the checkpoint written in your transaction."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from catga.errors import StaleFencingTokenError
from catga.postgres import PostgresCheckpointStore, PostgresSnapshotStore
from catga.testing.contracts import CheckpointStoreContract, SnapshotStoreContract

pytestmark = pytest.mark.postgres


@pytest.fixture
async def snapshot_store(pool: Any, unique_name: str) -> AsyncIterator[PostgresSnapshotStore]:
    async with PostgresSnapshotStore(pool, table=f"snap_{unique_name}") as store:
        yield store


@pytest.fixture
async def checkpoint_store(pool: Any, unique_name: str) -> AsyncIterator[PostgresCheckpointStore]:
    async with PostgresCheckpointStore(pool, table=f"ckpt_{unique_name}") as store:
        yield store


class TestPostgresSnapshotStore(SnapshotStoreContract):
    pass


class TestPostgresCheckpointStore(CheckpointStoreContract):
    pass


async def test_a_checkpoint_commits_with_the_read_model_or_not_at_all(
    checkpoint_store: PostgresCheckpointStore, pool: Any, unique_name: str
) -> None:
    model = f"model_{unique_name}"
    await pool.execute(f"CREATE TABLE {model} (position bigint)")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"INSERT INTO {model} VALUES (1)")
        await checkpoint_store.save("view", 1, fencing_token=2, connection=conn)
    with pytest.raises(StaleFencingTokenError):
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f"INSERT INTO {model} VALUES (2)")
            await checkpoint_store.save("view", 2, fencing_token=1, connection=conn)  # a stale owner
    assert [r[0] for r in await pool.fetch(f"SELECT position FROM {model}")] == [1]
    assert await checkpoint_store.get("view") == 1
