"""OutboxRelay on the in-memory store and transport: publishing, retries, dead letters, loop, purge."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec
import pytest

import catga
from catga.errors import BackendUnavailableError, ConfigurationError, ErrorCode
from catga.memory import MemoryBroker, MemoryDeadLetterQueue, MemoryOutboxStore, MemoryTransport
from catga.messages import Event, Metadata, message_name
from catga.outbox import OutboxRelay
from catga.protocols import OutboxMessage, OutboxStatus
from catga.serialization import TypeRegistry

WAIT = 10.0


@message_name("relay.Shipped")
class Shipped(msgspec.Struct, Event, frozen=True):
    order_id: str


REGISTRY = TypeRegistry()
REGISTRY.register(Shipped)


def entry(n: int, destination: str = "relay.Shipped") -> OutboxMessage:
    md = Metadata(message_id=1000 + n, created_at=time.time())
    return OutboxMessage(
        id=str(md.message_id),
        destination=destination,
        type_name="relay.Shipped",
        body=msgspec.json.encode(Shipped(f"o-{n}")),
        headers=md.to_headers("relay.Shipped"),
        created_at=md.created_at + n * 1e-6,
    )


class FlakyTransport(MemoryTransport):
    """Fails ``publish_raw`` for the destinations in ``failing`` (as a broken connection would)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failing: set[str] = set()
        self.attempts: dict[str, int] = {}

    async def publish_raw(self, destination: str, body: bytes, headers: Mapping[str, str]) -> None:
        self.attempts[destination] = self.attempts.get(destination, 0) + 1
        if destination in self.failing:
            raise BackendUnavailableError("connection lost", backend="memory")
        await super().publish_raw(destination, body, headers)


@pytest.fixture
async def bus() -> AsyncIterator[tuple[FlakyTransport, list[str]]]:
    """A transport whose subscriber records the order ids it receives."""
    transport = FlakyTransport(broker=MemoryBroker(), registry=REGISTRY)
    received: list[str] = []

    async def on_shipped(event: Shipped, metadata: Metadata) -> None:
        received.append(event.order_id)

    sub = await transport.subscribe(Shipped, on_shipped, group="g")
    yield transport, received
    await sub.aclose()
    await transport.aclose()


async def until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.005)


async def test_a_pass_publishes_due_messages_and_marks_them(bus: tuple[FlakyTransport, list[str]]) -> None:
    transport, received = bus
    store = MemoryOutboxStore()
    await store.add([entry(n) for n in range(3)])
    relay = OutboxRelay(store, transport)
    assert await relay.run_once() == 3
    await until(lambda: len(received) == 3, "three deliveries")
    assert sorted(received) == ["o-0", "o-1", "o-2"]
    assert (await store.count(OutboxStatus.PUBLISHED), await store.count(OutboxStatus.PENDING)) == (3, 0)
    assert await relay.run_once() == 0  # nothing left
    assert relay.published == 3


async def test_failures_back_off_then_dead_letter_while_the_rest_goes_out(
    bus: tuple[FlakyTransport, list[str]],
) -> None:
    transport, received = bus
    transport.failing.add("relay.Broken")
    store, dlq = MemoryOutboxStore(), MemoryDeadLetterQueue()
    await store.add([entry(1), entry(2, destination="relay.Broken")])
    relay = OutboxRelay(store, transport, dead_letters=dlq, max_attempts=3, retry_backoff=0.05)
    assert await relay.run_once() == 2
    broken = await store.get(str(1002))
    assert broken is not None and broken.status == OutboxStatus.PENDING
    assert broken.attempts == 1 and "connection lost" in (broken.last_error or "")
    assert broken.next_attempt_at >= time.time() + 0.02  # backed off, not retried at once
    assert await relay.run_once() == 0  # not due yet
    while (await store.count(OutboxStatus.DEAD)) == 0:
        await asyncio.sleep(0.02)
        await relay.run_once()
    assert transport.attempts["relay.Broken"] == 3
    dead = await store.get(str(1002))
    assert dead is not None and dead.status == OutboxStatus.DEAD
    [letter] = await dlq.list()
    assert letter.id == "1002" and letter.attempts == 3 and letter.source == "relay.Broken"
    assert letter.kind == "event"
    assert letter.body == entry(2).body and letter.error.startswith("outbox publish failed: ")
    assert "connection lost" in letter.error
    await until(lambda: received == ["o-1"], "the healthy message")
    assert (relay.published, relay.failed, relay.dead) == (1, 3, 1)


async def test_a_transport_that_comes_back_delivers_everything(bus: tuple[FlakyTransport, list[str]]) -> None:
    transport, received = bus
    transport.failing.add("relay.Shipped")
    store = MemoryOutboxStore()
    relay = OutboxRelay(store, transport, poll_interval=0.02, retry_backoff=0.01, retry_backoff_max=0.05)
    async with relay:
        await store.add([entry(n) for n in range(5)])
        relay.notify()
        await until(lambda: transport.attempts.get("relay.Shipped", 0) >= 10, "failed attempts")
        transport.failing.clear()
        await until(lambda: len(received) == 5, "delivery after recovery")
    assert await store.count(OutboxStatus.PENDING) == 0


async def test_notify_wakes_the_loop_and_closing_flushes(bus: tuple[FlakyTransport, list[str]]) -> None:
    transport, received = bus
    store = MemoryOutboxStore()
    relay = OutboxRelay(store, transport, poll_interval=30.0)
    await relay.start()
    await asyncio.sleep(0.05)  # the loop is now waiting for a notify (30 s poll)
    await store.add([entry(1)])
    relay.notify()
    await until(lambda: received == ["o-1"], "a notified delivery")
    await store.add([entry(2)])  # no notify: only the final pass of aclose() publishes it
    await relay.aclose()
    await until(lambda: received == ["o-1", "o-2"], "the flushed message")
    assert "stopped" in repr(relay)


async def test_full_batches_are_drained_without_waiting(bus: tuple[FlakyTransport, list[str]]) -> None:
    transport, received = bus
    store = MemoryOutboxStore()
    await store.add([entry(n) for n in range(25)])
    async with OutboxRelay(store, transport, batch_size=10, poll_interval=30.0):
        await until(lambda: len(received) == 25, "25 deliveries in three batches")


async def test_published_messages_are_purged_after_keep_published(
    bus: tuple[FlakyTransport, list[str]],
) -> None:
    transport, _ = bus
    store = MemoryOutboxStore()
    await store.add([entry(n) for n in range(3)])
    relay = OutboxRelay(store, transport, keep_published=0.0)
    await relay.run_once()
    assert await relay.purge() == 3
    assert await store.count(OutboxStatus.PUBLISHED) == 0
    assert await OutboxRelay(store, transport, keep_published=None).purge() == 0


async def test_two_relays_never_publish_a_leased_message_twice(bus: tuple[FlakyTransport, list[str]]) -> None:
    transport, received = bus
    store = MemoryOutboxStore()
    await store.add([entry(n) for n in range(40)])
    a, b = OutboxRelay(store, transport, batch_size=7), OutboxRelay(store, transport, batch_size=7)
    while await store.count(OutboxStatus.PENDING):
        await asyncio.gather(a.run_once(), b.run_once())
    await until(lambda: len(received) == 40, "40 deliveries")
    assert sorted(received) == sorted(f"o-{n}" for n in range(40))  # each exactly once


async def test_a_store_outage_is_logged_and_the_loop_goes_on(
    bus: tuple[FlakyTransport, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    transport, received = bus

    class Outage(MemoryOutboxStore):
        calls = 0

        async def fetch_pending(self, limit: int = 100, lease: float = 30.0) -> list[OutboxMessage]:
            Outage.calls += 1
            if Outage.calls == 1:
                raise BackendUnavailableError("store down", backend="memory")
            return await super().fetch_pending(limit, lease)

    store = Outage()
    await store.add([entry(1)])
    with caplog.at_level(logging.ERROR, logger="catga.outbox"):
        async with OutboxRelay(store, transport, poll_interval=0.02):
            await until(lambda: received == ["o-1"], "delivery after the outage")
    assert any("outbox relay pass failed" in r.getMessage() for r in caplog.records)


async def test_500_failed_publishes_log_one_line_and_the_recovery_one_more(
    bus: tuple[FlakyTransport, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    transport, received = bus
    transport.failing.add("relay.Shipped")
    store = MemoryOutboxStore()
    await store.add([entry(n) for n in range(100)])
    relay = OutboxRelay(store, transport, max_attempts=100, retry_backoff=0.0, retry_backoff_max=0.0)
    with caplog.at_level(logging.INFO, logger="catga.outbox"):
        for _ in range(5):
            assert await relay.run_once() == 100
        assert relay.failed == 500
        assert len(caplog.records) == 1, [r.getMessage() for r in caplog.records]
        (first,) = caplog.records
        assert first.levelno == logging.WARNING and first.exc_info is None
        assert "outbox relay publishing failed" in first.getMessage()
        assert "connection lost" in first.getMessage() and "attempt 1 of 100" in first.getMessage()
        transport.failing.clear()
        assert await relay.run_once() == 100
    await until(lambda: len(received) == 100, "every message after the recovery")
    assert len(caplog.records) == 2
    assert "outbox relay publishing recovered after 500 failures" in caplog.records[1].getMessage()


async def test_a_message_over_the_payload_limit_is_dead_at_once(caplog: pytest.LogCaptureFixture) -> None:
    transport = MemoryTransport(registry=REGISTRY, max_payload=8)
    store, dlq = MemoryOutboxStore(), MemoryDeadLetterQueue()
    await store.add([entry(1)])
    relay = OutboxRelay(store, transport, dead_letters=dlq, max_attempts=10)
    with caplog.at_level(logging.ERROR, logger="catga.outbox"):
        assert await relay.run_once() == 1
    assert (relay.failed, relay.dead) == (1, 1)
    [letter] = await dlq.list()
    assert letter.attempts == 1 and "PayloadTooLargeError" in letter.error and "8 bytes" in letter.error
    assert any("is dead after 1 attempt(s)" in r.getMessage() for r in caplog.records)
    await transport.aclose()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"max_attempts": 0},
        {"lease": 0},
        {"poll_interval": -1},
        {"keep_published": -1},
        {"retry_backoff": 2.0, "retry_backoff_max": 1.0},
    ],
)
def test_bad_settings_are_configuration_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        OutboxRelay(MemoryOutboxStore(), MemoryTransport(), **kwargs)


async def test_an_app_with_an_outbox_stores_exported_events_and_the_relay_publishes_them() -> None:
    broker = MemoryBroker()
    failing = FlakyTransport(broker=broker, registry=REGISTRY)
    failing.failing.add("relay.Shipped")
    publisher = catga.App(transport=failing, outbox="memory://", name="pub", registry=REGISTRY)
    consumer = catga.App(
        transport=MemoryTransport(broker=broker, registry=REGISTRY), name="sub", registry=REGISTRY
    )
    got: list[tuple[str, int]] = []

    @consumer.handler
    async def on_shipped(event: Shipped, ctx: catga.Context) -> None:
        got.append((event.order_id, ctx.message_id))

    publisher.export(Shipped)
    consumer.consume(Shipped)
    async with consumer, publisher:
        assert publisher.relay is not None and publisher.outbox is not None
        publisher.relay.retry_backoff = publisher.relay.retry_backoff_max = 0.01
        result = await publisher.publish(
            Shipped("o-9"), metadata=Metadata(message_id=77, created_at=time.time())
        )
        assert result.ok, result.error  # stored: the transport being down does not fail the publish
        stored = await publisher.outbox.get("77")
        assert stored is not None and stored.destination == "relay.Shipped"
        await until(lambda: failing.attempts.get("relay.Shipped", 0) >= 2, "retries")
        assert got == []
        failing.failing.clear()
        await until(lambda: got == [("o-9", 77)], "the event on the other app, with its id")


async def test_an_app_refuses_an_event_over_max_payload_before_storing_it_in_the_outbox() -> None:
    store = MemoryOutboxStore()
    transport = MemoryTransport(registry=REGISTRY)
    app = catga.App(transport=transport, outbox=store, name="pub", registry=REGISTRY, max_payload=64)
    app.export(Shipped)
    async with app:
        assert (await app.publish(Shipped("small"))).ok
        result = await app.publish(Shipped("x" * 64))
    assert result.code == ErrorCode.TOO_LARGE and "64 bytes" in (result.error or ""), result
    assert await store.count(OutboxStatus.PENDING) + await store.count(OutboxStatus.PUBLISHED) == 1
