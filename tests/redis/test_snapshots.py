"""The snapshot and checkpoint contracts on Redis (a single server, a cluster, Sentinel), plus Redis-only
checks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from catga.eventsourcing import Snapshot
from catga.redis import RedisCheckpointStore, RedisClient, RedisSnapshotStore
from catga.testing.contracts import CheckpointStoreContract, SnapshotStoreContract

pytestmark = pytest.mark.redis


@pytest.fixture
async def snapshot_store(redis_client: RedisClient) -> AsyncIterator[RedisSnapshotStore]:
    async with RedisSnapshotStore(redis_client) as store:
        yield store


@pytest.fixture
async def checkpoint_store(redis_client: RedisClient) -> AsyncIterator[RedisCheckpointStore]:
    async with RedisCheckpointStore(redis_client) as store:
        yield store


class TestRedisSnapshotStore(SnapshotStoreContract):
    @pytest.fixture
    async def snapshot_store(self, contract_redis_client: RedisClient) -> AsyncIterator[RedisSnapshotStore]:
        async with RedisSnapshotStore(contract_redis_client) as store:
            yield store


class TestRedisCheckpointStore(CheckpointStoreContract):
    @pytest.fixture
    async def checkpoint_store(
        self, contract_redis_client: RedisClient
    ) -> AsyncIterator[RedisCheckpointStore]:
        async with RedisCheckpointStore(contract_redis_client) as store:
            yield store


async def test_the_key_layout(
    snapshot_store: RedisSnapshotStore, checkpoint_store: RedisCheckpointStore, redis_client: RedisClient
) -> None:
    p = redis_client.prefix
    await snapshot_store.save(Snapshot.of("Cart-1", 4, "shop.Cart", {"items": 2}))
    assert await redis_client.execute("HGET", f"{p}:snap:Cart-1", "version") == b"4"
    record = await redis_client.execute("HGET", f"{p}:snap:Cart-1", "record")
    assert b'"state":{"items":2}' in record
    await checkpoint_store.save("orders", 17, fencing_token=3)
    assert await redis_client.execute("HGET", f"{p}:ckpt:orders", "position") == b"17"
    assert await redis_client.execute("HGET", f"{p}:ckpt:orders", "fencing") == b"3"


async def test_an_unreadable_snapshot_reads_as_none_with_a_warning(
    snapshot_store: RedisSnapshotStore, redis_client: RedisClient, caplog: pytest.LogCaptureFixture
) -> None:
    await redis_client.execute("HSET", f"{redis_client.prefix}:snap:Cart-2", "version", "1", "record", "{")
    with caplog.at_level(logging.WARNING, "catga.eventsourcing"):
        assert await snapshot_store.get("Cart-2") is None
    assert "unreadable" in caplog.text
