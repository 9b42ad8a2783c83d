"""The dead-letter-queue contract on a NATS KV-layout bucket, plus NATS-only behaviour."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from catga.errors import ConfigurationError
from catga.nats import NatsConnection, NatsDeadLetterQueue
from catga.protocols import DeadLetter
from catga.testing.contracts import DeadLetterQueueContract

pytestmark = pytest.mark.nats


@pytest.fixture
async def dead_letter_queue(
    nats_connection: NatsConnection, unique_name: str, doomed_streams: list[str]
) -> AsyncIterator[NatsDeadLetterQueue]:
    doomed_streams.append(f"KV_{unique_name}")
    async with NatsDeadLetterQueue(nats_connection, bucket=unique_name) as queue:
        yield queue


class TestNatsDeadLetterQueue(DeadLetterQueueContract):
    pass


@pytest.mark.parametrize("id", ["a b/c", "ünïcode ✓", "*", ">", "a.b", "x" * 300])
async def test_any_letter_id_is_stored_under_its_own_key(
    dead_letter_queue: NatsDeadLetterQueue, id: str
) -> None:
    await dead_letter_queue.add(DeadLetter(id=id, source="s", type_name="", body=b"1", failed_at=time.time()))
    await dead_letter_queue.add(DeadLetter(id=id + "2", source="s", type_name="", body=b"2"))
    got = await dead_letter_queue.get(id)
    assert got is not None and got.id == id and got.body == b"1"
    assert [d.id for d in await dead_letter_queue.list()] == [id, id + "2"]
    assert await dead_letter_queue.delete(id) is True
    assert await dead_letter_queue.count() == 1


async def test_a_letter_without_an_id_is_refused(dead_letter_queue: NatsDeadLetterQueue) -> None:
    with pytest.raises(ConfigurationError):
        await dead_letter_queue.add(DeadLetter(id="", source="s", type_name="", body=b""))


async def test_listing_pages_through_many_letters(dead_letter_queue: NatsDeadLetterQueue) -> None:
    for i in range(300):
        await dead_letter_queue.add(DeadLetter(id=f"d{i}", source="s", type_name="", body=b"%d" % i))
    listed = await dead_letter_queue.list(limit=1000)
    assert [d.id for d in listed] == [f"d{i}" for i in range(300)]
    assert await dead_letter_queue.count() == 300


async def test_reads_never_create_the_bucket(nats_connection: NatsConnection, unique_name: str) -> None:
    # `catga dlq list` with a mistyped ?prefix= used to leave an empty KV_<prefix>_dead_letters behind.
    async with NatsDeadLetterQueue(nats_connection, bucket=unique_name) as queue:
        assert await queue.list() == []
        assert await queue.get("x") is None
        assert await queue.count() == 0
        assert await queue.delete("x") is False
        names = [info.config.name for info in await nats_connection.js.streams_info()]
        assert f"KV_{unique_name}" not in names
        await queue.add(DeadLetter(id="x", source="s", type_name="", body=b"1"))
        try:
            assert await queue.count() == 1
            assert (await queue.get("x")) is not None
        finally:
            await nats_connection.js.delete_stream(f"KV_{unique_name}")
