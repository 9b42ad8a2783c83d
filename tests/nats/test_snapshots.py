"""The snapshot and checkpoint contracts on NATS KV-layout buckets, plus NATS-only checks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from catga.eventsourcing import Snapshot
from catga.nats import NatsCheckpointStore, NatsConnection, NatsSnapshotStore
from catga.testing.contracts import CheckpointStoreContract, SnapshotStoreContract

pytestmark = pytest.mark.nats


@pytest.fixture
async def snapshot_store(
    nats_connection: NatsConnection, unique_name: str, doomed_streams: list[str]
) -> AsyncIterator[NatsSnapshotStore]:
    doomed_streams.append(f"KV_{unique_name}")
    async with NatsSnapshotStore(nats_connection, bucket=unique_name, storage="memory") as store:
        yield store


@pytest.fixture
async def checkpoint_store(
    nats_connection: NatsConnection, unique_name: str, doomed_streams: list[str]
) -> AsyncIterator[NatsCheckpointStore]:
    doomed_streams.append(f"KV_{unique_name}")
    async with NatsCheckpointStore(nats_connection, bucket=unique_name, storage="memory") as store:
        yield store


class TestNatsSnapshotStore(SnapshotStoreContract):
    pass


class TestNatsCheckpointStore(CheckpointStoreContract):
    pass


async def test_a_snapshot_is_plain_json_in_the_bucket(
    snapshot_store: NatsSnapshotStore, nats_connection: NatsConnection
) -> None:
    await snapshot_store.save(Snapshot.of("Cart-1", 4, "shop.Cart", {"items": 2}, schema_version=3))
    msg = await nats_connection.js.get_last_msg(
        f"KV_{snapshot_store.bucket}", f"$KV.{snapshot_store.bucket}.Cart-1"
    )
    assert msg.headers is not None and msg.headers["Catga-Version"] == "4"
    assert b'"state":{"items":2}' in msg.data and b'"schema_version":3' in msg.data


async def test_an_unreadable_snapshot_reads_as_none_with_a_warning(
    snapshot_store: NatsSnapshotStore, nats_connection: NatsConnection, caplog: pytest.LogCaptureFixture
) -> None:
    await snapshot_store.save(Snapshot.of("Cart-1", 0, "shop.Cart", {}))  # creates the bucket
    await nats_connection.js.publish(f"$KV.{snapshot_store.bucket}.Cart-2", b"not json")
    with caplog.at_level(logging.WARNING, "catga.eventsourcing"):
        assert await snapshot_store.get("Cart-2") is None
    assert "unreadable" in caplog.text
    fresh = Snapshot.of("Cart-2", 0, "shop.Cart", {})
    await snapshot_store.save(fresh)  # replaces the broken record
    assert await snapshot_store.get("Cart-2") == fresh
