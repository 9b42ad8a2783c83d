"""RedisTransport: the transport contract on a real redis-server, plus Redis-specific behaviour."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from catga.errors import BackendError, BackendUnavailableError, ConfigurationError, InvalidIdentifierError
from catga.ids import new_id
from catga.messages import Metadata, QoS
from catga.protocols import InboxStore
from catga.redis import RedisClient
from catga.redis.dead_letter import RedisDeadLetterQueue
from catga.redis.transport import RedisTransport
from catga.testing.contracts import (
    ContractDoWork,
    ContractOrderPlaced,
    TransportContract,
    contract_registry,
)
from catga.testing.contracts._util import WAIT, eventually, unique

pytestmark = pytest.mark.redis

Factory = Callable[..., Awaitable[RedisTransport]]


async def _dead_letters(url: str, prefix: str) -> AsyncIterator[RedisDeadLetterQueue]:
    async with RedisDeadLetterQueue.connect(url, prefix=prefix) as dlq:
        yield dlq


async def _factory(url: str, prefix: str, dead_letters: RedisDeadLetterQueue) -> AsyncIterator[Factory]:
    made: list[RedisTransport] = []

    async def make(**options: Any) -> RedisTransport:
        settings: dict[str, Any] = {
            "registry": contract_registry(),
            "dead_letters": dead_letters,
            "retry_backoff": 0.01,
            "retry_backoff_max": 0.05,
        }
        settings.update(options)
        transport = RedisTransport.connect(url, prefix=prefix, **settings)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        await transport.aclose()


@pytest.fixture
async def transport_dead_letters(redis_url: str, unique_name: str) -> AsyncIterator[RedisDeadLetterQueue]:
    async for dlq in _dead_letters(redis_url, unique_name):
        yield dlq


@pytest.fixture
async def transport_factory(
    redis_url: str, unique_name: str, transport_dead_letters: RedisDeadLetterQueue
) -> AsyncIterator[Factory]:
    async for make in _factory(redis_url, unique_name, transport_dead_letters):
        yield make


class TestRedisTransport(TransportContract):
    """The contract on a single server and on the session's Redis Cluster."""

    @pytest.fixture
    async def transport_dead_letters(
        self, contract_redis_url: str, unique_name: str
    ) -> AsyncIterator[RedisDeadLetterQueue]:
        async for dlq in _dead_letters(contract_redis_url, unique_name):
            yield dlq

    @pytest.fixture
    async def transport_factory(
        self, contract_redis_url: str, unique_name: str, transport_dead_letters: RedisDeadLetterQueue
    ) -> AsyncIterator[Factory]:
        async for make in _factory(contract_redis_url, unique_name, transport_dead_letters):
            yield make

    @pytest.fixture
    def transport_inbox_factory(
        self, transport_factory: Factory
    ) -> Callable[[InboxStore], Awaitable[RedisTransport]]:
        async def make(inbox: InboxStore) -> RedisTransport:
            return await transport_factory(inbox=inbox)

        return make


# --------------------------------------------------------------------------------------------------
# Redis-specific behaviour


def evt_key(prefix: str, dest: str) -> str:
    return f"{prefix}:t:evt:{dest}"


def cmd_key(prefix: str, dest: str) -> str:
    return f"{prefix}:t:cmd:{dest}"


async def pending_count(client: RedisClient, key: str, group: str) -> int:
    return int((await client.execute("XPENDING", key, group))[0])


def recorder(into: list[Any]) -> Callable[[Any, Metadata], Awaitable[None]]:
    async def handle(message: Any, meta: Metadata) -> None:
        into.append(message)

    return handle


async def test_wire_format_is_readable_by_a_plain_client(
    transport_factory: Factory, redis_client: RedisClient, redis_url: str, unique_name: str
) -> None:
    t = await transport_factory()
    dest = unique("ev")
    await t.subscribe(ContractOrderPlaced, recorder([]), group="g", destination=dest)
    plain = aioredis.Redis.from_url(redis_url)
    pubsub = plain.pubsub()
    try:
        await pubsub.subscribe(evt_key(unique_name, dest))
        assert (await pubsub.get_message(timeout=WAIT))["type"] == "subscribe"  # type: ignore[index]
        meta = Metadata(message_id=42, correlation_id=7, headers={"x-tenant": "acme"})
        await t.publish(ContractOrderPlaced("o-1", 5), metadata=meta, destination=dest)
        entries = await redis_client.execute("XRANGE", evt_key(unique_name, dest), "-", "+")
        fields = entries[-1][1]
        assert fields[0] == b"body"
        assert json.loads(fields[1]) == {"order_id": "o-1", "total": 5}
        headers = dict(zip(fields[2::2], fields[3::2], strict=True))
        assert headers[b"Catga-Type"] == b"contracts.OrderPlaced"
        assert headers[b"Catga-Id"] == b"42"
        assert headers[b"Catga-Correlation-Id"] == b"7"
        assert headers[b"x-tenant"] == b"acme"
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=WAIT)
        assert message is not None
        head, _, body = message["data"].partition(b"\n")
        assert json.loads(head)["Catga-Type"] == "contracts.OrderPlaced"
        assert json.loads(body) == {"order_id": "o-1", "total": 5}
    finally:
        await pubsub.aclose()
        await plain.aclose()


async def test_commands_sent_before_any_worker_wait_and_are_deleted_once_handled(
    transport_factory: Factory, redis_client: RedisClient, unique_name: str
) -> None:
    sender = await transport_factory()
    dest = unique("cmd")
    for job in range(3):
        await sender.send(ContractDoWork(job), destination=dest)
    assert await redis_client.execute("XLEN", cmd_key(unique_name, dest)) == 3
    worker = await transport_factory()
    got: list[ContractDoWork] = []
    await worker.subscribe(ContractDoWork, recorder(got), destination=dest)

    async def drained() -> bool:
        return len(got) == 3 and await redis_client.execute("XLEN", cmd_key(unique_name, dest)) == 0

    await eventually(drained, what="3 commands handled and deleted from the command stream")
    assert sorted(c.job for c in got) == [0, 1, 2]
    assert await pending_count(redis_client, cmd_key(unique_name, dest), "catga-cmd") == 0


async def test_a_failed_delivery_is_reclaimed_from_the_pending_list(
    transport_factory: Factory, redis_client: RedisClient, unique_name: str
) -> None:
    t1, t2 = await transport_factory(), await transport_factory()
    dest = unique("ev")
    key = evt_key(unique_name, dest)
    deliveries: list[int] = []

    async def flaky(message: ContractOrderPlaced, meta: Metadata) -> None:
        info = await redis_client.execute("XPENDING", key, "g", "-", "+", 10)
        deliveries.append(int(info[0][3]))  # the server's delivery counter
        if len(deliveries) < 3:
            raise RuntimeError("transient")

    await t1.subscribe(ContractOrderPlaced, flaky, group="g", destination=dest, max_deliver=5)
    await t2.publish(ContractOrderPlaced("o", 1), destination=dest)

    async def acked() -> bool:
        return len(deliveries) == 3 and await pending_count(redis_client, key, "g") == 0

    await eventually(acked, what="third delivery succeeded and was acked")
    assert deliveries == [1, 2, 3]


async def test_a_dead_consumers_pending_message_is_taken_over(
    transport_factory: Factory, redis_client: RedisClient, unique_name: str
) -> None:
    t1 = await transport_factory()
    dest = unique("ev")
    key = evt_key(unique_name, dest)
    await redis_client.execute("XGROUP", "CREATE", key, "g", "$", "MKSTREAM")
    await t1.publish(ContractOrderPlaced("o-9", 9), destination=dest)
    read = await redis_client.execute(
        "XREADGROUP", "GROUP", "g", "dead-worker", "COUNT", 10, "STREAMS", key, ">"
    )
    assert len(read[0][1]) == 1  # delivered to a consumer that will never ack it
    t2 = await transport_factory(claim_min_idle=0.2)
    got: list[ContractOrderPlaced] = []
    await t2.subscribe(ContractOrderPlaced, recorder(got), group="g", destination=dest)

    async def taken_over() -> bool:
        return len(got) == 1 and await pending_count(redis_client, key, "g") == 0

    await eventually(taken_over, what="the stuck message claimed, handled and acked")
    assert got == [ContractOrderPlaced("o-9", 9)]


async def test_a_message_delivered_too_often_is_dead_lettered_unhandled(
    transport_factory: Factory,
    transport_dead_letters: RedisDeadLetterQueue,
    redis_client: RedisClient,
    unique_name: str,
) -> None:
    t1 = await transport_factory()
    dest = unique("ev")
    key = evt_key(unique_name, dest)
    await redis_client.execute("XGROUP", "CREATE", key, "g", "$", "MKSTREAM")
    mid = new_id()
    await t1.publish(ContractOrderPlaced("poison", 1), metadata=Metadata(message_id=mid), destination=dest)
    read = await redis_client.execute("XREADGROUP", "GROUP", "g", "crashing", "COUNT", 1, "STREAMS", key, ">")
    entry_id = read[0][1][0][0]
    for _ in range(3):  # three more deliveries to consumers that crashed: 4 in all
        await redis_client.execute("XCLAIM", key, "g", "crashing", 0, entry_id)
    t2 = await transport_factory(claim_min_idle=0.2)
    got: list[ContractOrderPlaced] = []
    await t2.subscribe(ContractOrderPlaced, recorder(got), group="g", destination=dest, max_deliver=3)

    async def dead() -> bool:
        return await transport_dead_letters.get(str(mid)) is not None

    await eventually(dead, what="poison message dead-lettered")
    letter = await transport_dead_letters.get(str(mid))
    assert letter is not None
    assert "without an ack" in letter.error
    assert letter.attempts == 5  # the take-over was the fifth delivery
    assert contract_registry().decode(letter.type_name, letter.body) == ContractOrderPlaced("poison", 1)
    await eventually(lambda: _zero(pending_count(redis_client, key, "g")), what="acked")
    assert got == []


async def _zero(count: Awaitable[int]) -> bool:
    return await count == 0


async def test_a_long_handler_keeps_its_message(transport_factory: Factory) -> None:
    t1, t2 = await transport_factory(claim_min_idle=0.3), await transport_factory(claim_min_idle=0.3)
    dest = unique("ev")
    calls: list[str] = []

    async def slow(message: ContractOrderPlaced, meta: Metadata) -> None:
        calls.append(message.order_id)
        await asyncio.sleep(1.2)

    await t1.subscribe(ContractOrderPlaced, slow, group="g", destination=dest)
    await t2.subscribe(ContractOrderPlaced, slow, group="g", destination=dest)
    await t1.publish(ContractOrderPlaced("long", 1), destination=dest)
    await eventually(lambda: _truthy(calls), what="handler started")
    await asyncio.sleep(1.5)  # several claim_min_idle periods: the holder keeps refreshing it
    assert calls == ["long"]


async def _truthy(value: object) -> bool:
    return bool(value)


async def test_a_message_waiting_for_retry_is_taken_over_when_its_consumer_leaves(
    transport_factory: Factory,
) -> None:
    t1 = await transport_factory(claim_min_idle=0.3, retry_backoff=60.0, retry_backoff_max=60.0)
    dest = unique("ev")
    failures: list[str] = []

    async def failing(message: ContractOrderPlaced, meta: Metadata) -> None:
        failures.append(message.order_id)
        raise RuntimeError("down")

    sub1 = await t1.subscribe(ContractOrderPlaced, failing, group="g", destination=dest)
    await t1.publish(ContractOrderPlaced("o-1", 1), destination=dest)
    await eventually(lambda: _truthy(failures), what="first delivery failed")
    t2 = await transport_factory(claim_min_idle=0.3)
    got: list[ContractOrderPlaced] = []
    await t2.subscribe(ContractOrderPlaced, recorder(got), group="g", destination=dest)
    await sub1.aclose()  # leaves with the message pending, waiting for its retry
    await eventually(lambda: _truthy(got), what="the other member took the message over")
    assert got == [ContractOrderPlaced("o-1", 1)]
    assert failures == ["o-1"]


async def test_entries_not_written_by_catga_are_dead_lettered(
    transport_factory: Factory,
    transport_dead_letters: RedisDeadLetterQueue,
    redis_client: RedisClient,
    unique_name: str,
) -> None:
    t = await transport_factory()
    dest = unique("ev")
    key = evt_key(unique_name, dest)
    got: list[ContractOrderPlaced] = []
    await t.subscribe(ContractOrderPlaced, recorder(got), group="g", destination=dest)
    entry_id = await redis_client.execute("XADD", key, "*", "foo", "bar")

    async def dead() -> bool:
        return await transport_dead_letters.count() == 1 and await pending_count(redis_client, key, "g") == 0

    await eventually(dead, what="foreign entry dead-lettered and acked")
    [letter] = await transport_dead_letters.list()
    # no catga id: the letter id is a digest of the message, the same on every path (issue 10)
    assert "body" in letter.error and letter.id.startswith("unidentified-") and entry_id
    assert (letter.source, letter.kind) == (dest, "event")  # the destination, not the stream key
    assert letter.headers == {"foo": "bar"}
    assert got == []


async def test_at_most_once_without_group_uses_pub_sub(
    transport_factory: Factory,
    transport_dead_letters: RedisDeadLetterQueue,
    redis_client: RedisClient,
    unique_name: str,
) -> None:
    t1, t2 = await transport_factory(), await transport_factory()
    dest = unique("ev")
    channel = evt_key(unique_name, dest)
    got: list[ContractOrderPlaced] = []
    sub = await t1.subscribe(ContractOrderPlaced, recorder(got), qos=QoS.AT_MOST_ONCE, destination=dest)
    assert (await redis_client.execute("PUBSUB", "NUMSUB", channel))[1] == 1
    await t2.publish(ContractOrderPlaced("o", 1), destination=dest)
    await eventually(lambda: _truthy(got), what="pub/sub delivery")
    assert await redis_client.execute("XINFO", "GROUPS", channel) == []  # no consumer group involved
    await redis_client.execute("PUBLISH", channel, b"not a catga frame")
    await eventually(lambda: _positive(transport_dead_letters.count()), what="garbage frame dead-lettered")
    [letter] = await transport_dead_letters.list()
    assert letter.body == b"not a catga frame" and "undecodable" in letter.error
    await sub.aclose()

    async def unsubscribed() -> bool:
        return (await redis_client.execute("PUBSUB", "NUMSUB", channel))[1] == 0

    await eventually(unsubscribed, what="channel unsubscribed")
    assert got == [ContractOrderPlaced("o", 1)]


async def _positive(count: Awaitable[int]) -> bool:
    return await count > 0


async def test_at_most_once_with_a_group_competes_and_never_redelivers(
    transport_factory: Factory, redis_client: RedisClient, unique_name: str
) -> None:
    t1, t2 = await transport_factory(), await transport_factory()
    dest = unique("ev")
    calls: list[int] = []

    async def broken(message: ContractOrderPlaced, meta: Metadata) -> None:
        calls.append(message.total)
        raise RuntimeError("lost on purpose")

    for t in (t1, t2):
        await t.subscribe(ContractOrderPlaced, broken, qos=QoS.AT_MOST_ONCE, group="g", destination=dest)
    for i in range(10):
        await t2.publish(ContractOrderPlaced("o", i), destination=dest)
    await eventually(lambda: _truthy(len(calls) >= 10), what="10 deliveries")
    await asyncio.sleep(0.3)
    assert sorted(calls) == list(range(10))
    assert await pending_count(redis_client, evt_key(unique_name, dest), "g") == 0  # NOACK: never pending


async def test_closing_removes_private_groups_and_idle_consumers(
    transport_factory: Factory, redis_client: RedisClient, unique_name: str
) -> None:
    t = await transport_factory()
    dest = unique("ev")
    key = evt_key(unique_name, dest)
    private = await t.subscribe(ContractOrderPlaced, recorder([]), destination=dest)
    named = await t.subscribe(ContractOrderPlaced, recorder([]), group="billing", destination=dest)
    await t.publish(ContractOrderPlaced("o", 1), destination=dest)
    groups = {g[1] for g in await redis_client.execute("XINFO", "GROUPS", key)}
    assert b"billing" in groups and any(name.startswith(b"~") for name in groups)
    await private.aclose()
    await named.aclose()
    assert [g[1] for g in await redis_client.execute("XINFO", "GROUPS", key)] == [b"billing"]
    assert await redis_client.execute("XINFO", "CONSUMERS", key, "billing") == []


async def test_the_sweep_removes_abandoned_groups_and_consumers(
    transport_factory: Factory, redis_client: RedisClient, unique_name: str
) -> None:
    dest = unique("ev")
    key = evt_key(unique_name, dest)
    await redis_client.execute("XGROUP", "CREATE", key, "~crashed", "$", "MKSTREAM")  # no live key
    await redis_client.execute("XGROUP", "CREATE", key, "g", "$")
    entry = await redis_client.execute("XADD", key, "*", "body", b"{}")
    await redis_client.execute("XREADGROUP", "GROUP", "g", "ghost", "STREAMS", key, ">")
    await redis_client.execute("XACK", key, "g", entry)  # an idle consumer holding nothing
    assert b"ghost" in [c[1] for c in await redis_client.execute("XINFO", "CONSUMERS", key, "g")]
    live = await transport_factory(claim_min_idle=0.1, consumer_ttl=0.3)
    await live.subscribe(ContractOrderPlaced, recorder([]), destination=dest)  # a live private group
    t = await transport_factory(claim_min_idle=0.1, consumer_ttl=0.3)
    await t.subscribe(ContractOrderPlaced, recorder([]), group="g", destination=dest)

    async def swept() -> bool:
        groups = [g[1] for g in await redis_client.execute("XINFO", "GROUPS", key)]
        consumers = [c[1] for c in await redis_client.execute("XINFO", "CONSUMERS", key, "g")]
        return b"~crashed" not in groups and b"ghost" not in consumers

    await eventually(swept, what="abandoned private group and idle consumer deleted")
    await asyncio.sleep(0.5)  # more sweeps: the live private group stays
    groups = [g[1] for g in await redis_client.execute("XINFO", "GROUPS", key)]
    assert b"g" in groups and sum(1 for g in groups if g.startswith(b"~")) == 1


async def test_aclose_cancels_handlers_after_the_drain_timeout_and_keeps_the_message(
    transport_factory: Factory, redis_client: RedisClient, unique_name: str
) -> None:
    t = await transport_factory(drain_timeout=0.2)
    dest = unique("ev")
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def stuck(message: ContractOrderPlaced, meta: Metadata) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await t.subscribe(ContractOrderPlaced, stuck, group="g", destination=dest)
    await t.publish(ContractOrderPlaced("o", 1), destination=dest)
    async with asyncio.timeout(WAIT):
        await started.wait()
        await t.aclose()
    assert cancelled.is_set()
    assert await pending_count(redis_client, evt_key(unique_name, dest), "g") == 1  # redelivered later


async def test_event_streams_are_trimmed(
    transport_factory: Factory, redis_client: RedisClient, unique_name: str
) -> None:
    t = await transport_factory(max_len=10)
    dest = unique("ev")
    await t.publish_batch([ContractOrderPlaced("o", i) for i in range(500)], destination=dest)
    assert await redis_client.execute("XLEN", evt_key(unique_name, dest)) < 500


async def test_misuse_raises_catga_errors(transport_factory: Factory) -> None:
    t = await transport_factory()
    with pytest.raises(ConfigurationError):
        RedisTransport(t.client, retry_backoff=2.0, retry_backoff_max=1.0)
    with pytest.raises(ConfigurationError):
        await t.subscribe(ContractOrderPlaced, recorder([]), max_in_flight=0)
    with pytest.raises(InvalidIdentifierError):
        await t.publish(ContractOrderPlaced("o", 1), destination="bad destination")
    with pytest.raises(InvalidIdentifierError):
        await t.subscribe(ContractOrderPlaced, recorder([]), group="no spaces")
    await t.aclose()
    with pytest.raises(BackendUnavailableError):
        await t.publish(ContractOrderPlaced("o", 1))


async def test_an_unreachable_server_raises_backend_unavailable() -> None:
    async with RedisTransport.connect("redis://127.0.0.1:1/0", timeout=1.0) as t:
        with pytest.raises(BackendUnavailableError):
            await t.publish(ContractOrderPlaced("o", 1))
        with pytest.raises(BackendUnavailableError):
            await t.subscribe(ContractOrderPlaced, recorder([]), group="g")


async def test_subscriptions_survive_a_connection_loss(
    transport_factory: Factory, redis_client: RedisClient
) -> None:
    t = await transport_factory()
    dest = unique("ev")
    from_stream: list[ContractOrderPlaced] = []
    from_pubsub: list[ContractOrderPlaced] = []
    await t.subscribe(ContractOrderPlaced, recorder(from_stream), group="g", destination=dest)
    await t.subscribe(ContractOrderPlaced, recorder(from_pubsub), qos=QoS.AT_MOST_ONCE, destination=dest)
    await redis_client.execute("CLIENT", "KILL", "TYPE", "pubsub")
    await redis_client.execute("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")

    async def delivered_again() -> bool:
        with contextlib.suppress(BackendError):  # the first call after the loss may fail
            await t.publish(ContractOrderPlaced("again", 1), destination=dest)
        return bool(from_stream) and bool(from_pubsub)

    await eventually(delivered_again, what="deliveries resumed on both paths after reconnecting")


async def test_exactly_once_deduplicates_per_group_not_across_groups(transport_factory: Factory) -> None:
    t1, t2 = await transport_factory(), await transport_factory()
    dest = unique("ev")
    seen: dict[str, list[int]] = {"a": [], "b": []}

    def handler(group: str) -> Callable[[ContractOrderPlaced, Metadata], Awaitable[None]]:
        async def handle(message: ContractOrderPlaced, meta: Metadata) -> None:
            seen[group].append(meta.message_id)

        return handle

    for group in ("a", "b"):
        await t1.subscribe(
            ContractOrderPlaced, handler(group), qos=QoS.EXACTLY_ONCE, group=group, destination=dest
        )
    mid = new_id()
    for _ in range(3):
        await t2.publish(ContractOrderPlaced("o", 1), metadata=Metadata(message_id=mid), destination=dest)
    await eventually(lambda: _truthy(seen["a"] and seen["b"]), what="both groups handled it")
    await asyncio.sleep(0.3)
    assert seen == {"a": [mid], "b": [mid]}


async def test_send_reaches_one_subscriber_whatever_their_groups(transport_factory: Factory) -> None:
    t1, t2, t3 = await transport_factory(), await transport_factory(), await transport_factory()
    dest = unique("cmd")
    got: list[int] = []

    async def handle(message: ContractDoWork, meta: Metadata) -> None:
        got.append(message.job)

    await t1.subscribe(ContractDoWork, handle, group="a", destination=dest)
    await t2.subscribe(ContractDoWork, handle, group="b", destination=dest)
    await t3.subscribe(ContractDoWork, handle, qos=QoS.AT_MOST_ONCE, destination=dest)
    for job in range(30):
        await t1.send(ContractDoWork(job), destination=dest)
    await eventually(lambda: _truthy(len(got) >= 30), what="30 commands handled")
    await asyncio.sleep(0.3)
    assert sorted(got) == list(range(30))
