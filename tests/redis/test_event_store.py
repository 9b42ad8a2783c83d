"""The EventStore contract on Redis, plus Redis-only checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from catga.protocols import NO_STREAM
from catga.redis import RedisClient, RedisEventStore
from catga.testing.contracts.event_store import EventStoreContract
from catga.testing.contracts.messages import ContractOrderPlaced, contract_registry

pytestmark = pytest.mark.redis


class TestRedisEventStore(EventStoreContract):
    @pytest.fixture
    async def event_store(self, contract_redis_url: str, unique_name: str) -> AsyncIterator[RedisEventStore]:
        store = RedisEventStore.connect(contract_redis_url, prefix=unique_name, registry=contract_registry())
        async with store:
            yield store


@pytest.fixture
async def store(redis_client: RedisClient) -> AsyncIterator[RedisEventStore]:
    async with RedisEventStore(redis_client, registry=contract_registry()) as store:
        yield store


async def test_stream_ids_named_like_fixed_keys_stay_streams(store: RedisEventStore) -> None:
    hostile = ["pos", "log", ":pos", "es:pos", "s:x", "x:", "lock:x", "x.y"]
    for i, sid in enumerate(hostile):
        assert await store.append(sid, [ContractOrderPlaced(sid, i)], NO_STREAM) == 0
    for sid in hostile:
        assert [e.data.order_id for e in await store.read(sid)] == [sid]
    feed = await store.read_all()
    assert [e.stream_id for e in feed] == hostile
    assert [e.position for e in feed] == list(range(1, len(hostile) + 1))
    assert await store.last_position() == len(hostile)


async def test_prefixes_isolate_applications(redis_url: str, unique_name: str) -> None:
    a = RedisEventStore.connect(redis_url, prefix=f"{unique_name}a", registry=contract_registry())
    b = RedisEventStore.connect(redis_url, prefix=f"{unique_name}a.b", registry=contract_registry())
    async with a, b:
        await a.append("s", [ContractOrderPlaced("a", 1)])
        assert await b.read("s") == []
        assert await b.read_all() == []
        await b.append("s", [ContractOrderPlaced("b", 1)], NO_STREAM)
        assert [e.data.order_id for e in await a.read_all()] == ["a"]


async def test_every_key_is_under_the_prefix_in_a_documented_family(redis_client: RedisClient) -> None:
    from catga.protocols import DeadLetter, OutboxMessage
    from catga.redis import (
        RedisCache,
        RedisDeadLetterQueue,
        RedisIdempotencyStore,
        RedisLock,
        RedisOutboxStore,
    )
    from catga.redis._keys import FAMILIES, FIXED

    store = RedisEventStore(redis_client, registry=contract_registry())
    await store.append("o-1", [ContractOrderPlaced("o", 1)])
    await (await RedisLock(redis_client).acquire("l-1", ttl=5)).release()
    idem = RedisIdempotencyStore(redis_client)
    await idem.claim("m-1")
    await idem.complete("m-2")
    await RedisCache(redis_client).set("c-1", b"x")
    outbox = RedisOutboxStore(redis_client)
    await outbox.add(
        [OutboxMessage(id=f"ob-{i}", destination="d", type_name="t", body=b"") for i in range(4)]
    )
    await outbox.fetch_pending(1, lease=30)
    await outbox.mark_published(["ob-1"])
    await outbox.mark_failed("ob-2", "x", None)
    await RedisDeadLetterQueue(redis_client).add(DeadLetter(id="d-1", source="s", type_name="t", body=b""))

    p = redis_client.prefix
    cursor, keys = b"0", []
    while True:
        cursor, part = await redis_client.execute("SCAN", cursor, "MATCH", f"{p}*", "COUNT", 1000)
        keys += [k.decode() for k in part]
        if cursor == b"0":
            break
    assert keys
    for key in keys:
        assert key.startswith(f"{p}:"), key
        rest = key[len(p) + 1 :]
        assert rest in FIXED or any(rest.startswith(f + ":") for f in FAMILIES), key
    assert {k[len(p) + 1 :] for k in keys} >= {
        "es:pos",
        "es:log",
        "ob-ready",
        "ob-wait",
        "ob-pub",
        "ob-dead",
        "dlq",
    }


async def test_subscription_ends_when_the_store_closes(redis_client: RedisClient) -> None:
    store = RedisEventStore(redis_client, registry=contract_registry())
    await store.append("s", [ContractOrderPlaced("o", 1)])
    seen = []

    async def consume() -> None:
        async for event in store.subscribe_all():
            seen.append(event)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.2)
    await store.aclose()
    async with asyncio.timeout(5):
        await task
    assert len(seen) == 1


async def test_subscription_survives_losing_its_connection(redis_client: RedisClient) -> None:
    store = RedisEventStore(redis_client, registry=contract_registry())
    it = store.subscribe_all()
    try:
        await store.append("s", [ContractOrderPlaced("o", 0)])
        async with asyncio.timeout(5):
            assert (await anext(it)).version == 0
        nxt = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0.2)  # now blocked in XREAD
        clients = (await redis_client.execute("CLIENT", "LIST")).decode().splitlines()
        name = f"name=catga-subscribe-all:{redis_client.prefix} "
        blocked = [line for line in clients if name in line and "cmd=xread" in line]
        assert len(blocked) == 1
        blocked_id = blocked[0].split("id=", 1)[1].split(" ", 1)[0]
        assert await redis_client.execute("CLIENT", "KILL", "ID", blocked_id) == 1
        await asyncio.sleep(0.2)
        await store.append("s", [ContractOrderPlaced("o", 1), ContractOrderPlaced("o", 2)])
        async with asyncio.timeout(5):
            got = [await nxt, await anext(it)]
        assert [e.version for e in got] == [1, 2]
    finally:
        await it.aclose()
        await store.aclose()


async def test_records_are_readable_by_a_plain_client(
    store: RedisEventStore, redis_client: RedisClient
) -> None:
    await store.append("plain", [ContractOrderPlaced("o", 7)], metadata={"k": "v"})
    p = redis_client.prefix
    (record,) = await redis_client.execute("LRANGE", f"{p}:es:s:plain", 0, -1)
    assert record.startswith(b"1|")
    ((entry_id, fields),) = await redis_client.execute("XRANGE", f"{p}:es:log", "-", "+")
    assert entry_id == b"1-0"
    assert fields[:4] == [b"s", b"plain", b"v", b"0"]
    name, _ts, meta, body = msgspec.msgpack.decode(fields[5])
    assert (name, meta, body) == ("contracts.OrderPlaced", {"k": "v"}, b'{"order_id":"o","total":7}')
