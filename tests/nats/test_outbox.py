"""The outbox contract on a NATS KV-layout bucket, plus NATS-only behaviour."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from catga.nats import NatsConnection, NatsOutboxStore
from catga.protocols import OutboxMessage, OutboxStatus
from catga.testing.contracts import OutboxStoreContract

pytestmark = pytest.mark.nats


@pytest.fixture
async def outbox_store(
    nats_connection: NatsConnection, unique_name: str, doomed_streams: list[str]
) -> AsyncIterator[NatsOutboxStore]:
    doomed_streams.append(f"KV_{unique_name}")
    async with NatsOutboxStore(nats_connection, bucket=unique_name) as store:
        yield store


class TestNatsOutboxStore(OutboxStoreContract):
    pass


def _message(id: str, body: bytes = b"{}") -> OutboxMessage:
    return OutboxMessage(id=id, destination="d", type_name="T", body=body, created_at=time.time())


async def test_a_batch_with_a_stored_id_stores_the_others_once(outbox_store: NatsOutboxStore) -> None:
    await outbox_store.add([_message("m2", b"first")])
    await outbox_store.add([_message("m1"), _message("m2", b"second"), _message("m3")])
    got = await outbox_store.get("m2")
    assert got is not None and got.body == b"first"
    assert await outbox_store.count() == 3


async def test_a_batch_is_one_atomic_write(
    outbox_store: NatsOutboxStore, nats_connection: NatsConnection
) -> None:
    await outbox_store.add([_message(f"b{i}") for i in range(50)])
    info = await nats_connection.js.stream_info(f"KV_{outbox_store.bucket}")
    assert info.config.allow_atomic is True
    assert info.state.messages == 50
    assert {m.id for m in await outbox_store.fetch_pending(100, 30.0)} == {f"b{i}" for i in range(50)}


async def test_two_relays_on_two_store_objects_never_share_a_message(
    outbox_store: NatsOutboxStore, nats_connection: NatsConnection
) -> None:
    await outbox_store.add([_message(f"r{i}") for i in range(30)])
    async with NatsOutboxStore(nats_connection, bucket=outbox_store.bucket) as other:
        first = await outbox_store.fetch_pending(20, 30.0)
        second = await other.fetch_pending(20, 30.0)
    ids = [m.id for m in first + second]
    assert len(ids) == len(set(ids)) == 30
    assert await outbox_store.count(OutboxStatus.PENDING) == 30
