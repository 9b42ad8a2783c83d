"""MemoryEventStore: the event-store contract, plus threads and memory-only behaviour."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from catga.errors import ConcurrencyError, ConfigurationError, SerializationError
from catga.memory import MemoryEventStore
from catga.protocols import ANY, NO_STREAM, StoredEvent
from catga.testing.contracts import (
    ContractItemAdded,
    ContractOrderPlaced,
    EventStoreContract,
    contract_registry,
)


class TestMemoryEventStore(EventStoreContract):
    @pytest.fixture
    async def event_store(self) -> AsyncIterator[MemoryEventStore]:
        async with MemoryEventStore(registry=contract_registry()) as store:
            yield store


class TestMemoryEventStoreWithoutRegistry(EventStoreContract):
    """Without a registry every object is accepted, so only the encode test differs."""

    @pytest.fixture
    async def event_store(self) -> AsyncIterator[MemoryEventStore]:
        async with MemoryEventStore() as store:
            yield store

    async def test_an_event_that_cannot_be_encoded_fails_the_whole_append(
        self, event_store: MemoryEventStore
    ) -> None:
        # no registry: nothing to check against, any object is stored as given
        marker = object()
        await event_store.append("s", [marker])
        assert [e.data for e in await event_store.read("s")] == [marker]

    async def test_an_event_over_the_payload_limit_fails_the_whole_append(
        self, event_store: MemoryEventStore
    ) -> None:
        # no registry: nothing is encoded, so there is no size to check; objects are stored as given
        huge = ContractOrderPlaced("x" * 2_000_000, 1)
        assert await event_store.append("s", [huge]) == 0


THREADS = 8


def _run_threads(target: object, n: int) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]  # type: ignore[arg-type]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()


def test_append_sync_from_many_threads_with_exact_versions() -> None:
    """Threads race with exact expected versions: every batch lands whole, versions contiguous."""
    store = MemoryEventStore()
    barrier = threading.Barrier(THREADS)
    conflicts = [0] * THREADS
    per_thread = 50

    def writer(w: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            batch = [ContractItemAdded(f"w{w}", 3 * i + k) for k in range(3)]
            while True:
                current = store.version_sync("shared")
                try:
                    store.append_sync("shared", batch, current)
                    break
                except ConcurrencyError:
                    conflicts[w] += 1

    _run_threads(writer, THREADS)
    events = store.read_sync("shared")
    assert [e.version for e in events] == list(range(THREADS * per_thread * 3))
    for k in range(0, len(events), 3):
        chunk = [e.data for e in events[k : k + 3]]
        assert len({d.sku for d in chunk}) == 1
        assert [d.qty % 3 for d in chunk] == [0, 1, 2]
    # per writer, its batches appear in its own order
    for w in range(THREADS):
        mine = [e.data.qty for e in events if e.data.sku == f"w{w}"]
        assert mine == list(range(per_thread * 3))
    positions = [e.position for e in store.read_all_sync()]
    assert positions == list(range(1, len(events) + 1))


def test_append_sync_any_from_many_threads_over_many_streams() -> None:
    store = MemoryEventStore()
    per_thread = 400

    def writer(w: int) -> None:
        for i in range(per_thread):
            store.append_sync(f"s{i % 7}", [ContractOrderPlaced(f"w{w}", i)], ANY)

    _run_threads(writer, THREADS)
    feed = store.read_all_sync()
    assert [e.position for e in feed] == list(range(1, THREADS * per_thread + 1))
    total = 0
    for s in range(7):
        events = store.read_sync(f"s{s}")
        assert [e.version for e in events] == list(range(len(events)))
        total += len(events)
    assert total == THREADS * per_thread


def test_threads_each_running_their_own_event_loop() -> None:
    """Tasks in several loops (one per thread) append concurrently through the async API."""
    store = MemoryEventStore()
    tasks_per_loop, appends = 8, 25

    def run_loop(w: int) -> None:
        async def task(t: int) -> None:
            for i in range(appends):
                while True:
                    current = await store.version("shared")
                    try:
                        await store.append("shared", [ContractOrderPlaced(f"{w}.{t}", i)], current)
                        break
                    except ConcurrencyError:
                        await asyncio.sleep(0)

        async def main() -> None:
            await asyncio.gather(*(task(t) for t in range(tasks_per_loop)))

        asyncio.run(main())

    _run_threads(run_loop, 4)
    events = store.read_sync("shared")
    assert [e.version for e in events] == list(range(4 * tasks_per_loop * appends))
    for w in range(4):
        for t in range(tasks_per_loop):
            assert [e.data.total for e in events if e.data.order_id == f"{w}.{t}"] == list(range(appends))


async def test_subscribers_in_other_loops_are_woken_by_appends() -> None:
    store = MemoryEventStore()
    received: list[list[int]] = [[] for _ in range(3)]
    ready = threading.Barrier(4)

    def subscriber(k: int) -> None:
        async def main() -> None:
            it = store.subscribe_all()
            ready.wait()
            async for event in it:
                received[k].append(event.position)
                if len(received[k]) == 20:
                    break

        asyncio.run(main())

    threads = [threading.Thread(target=subscriber, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    await asyncio.to_thread(ready.wait)
    for i in range(20):
        await store.append(f"s{i % 3}", [ContractOrderPlaced("o", i)])
        if i % 5 == 0:
            await asyncio.sleep(0.01)
    for t in threads:
        await asyncio.to_thread(t.join, 30)
        assert not t.is_alive()
    assert received == [list(range(1, 21))] * 3


async def test_a_subscriber_in_this_loop_is_woken_by_another_thread() -> None:
    store = MemoryEventStore()
    it = store.subscribe_all()
    first = asyncio.ensure_future(anext(it))
    await asyncio.sleep(0.01)
    assert not first.done()
    await asyncio.to_thread(store.append_sync, "s", [ContractOrderPlaced("o", 1)])
    async with asyncio.timeout(5):
        event = await first
    assert isinstance(event, StoredEvent) and event.position == 1
    await it.aclose()  # type: ignore[attr-defined]


async def test_aclose_ends_live_subscriptions() -> None:
    store = MemoryEventStore()
    await store.append("s", [ContractOrderPlaced("o", 1)])

    async def consume() -> list[int]:
        return [e.position async for e in store.subscribe_all()]

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.01)
    assert not task.done()
    await store.aclose()
    async with asyncio.timeout(5):
        assert await task == [1]
    await store.aclose()  # idempotent
    assert [e.version for e in await store.read("s")] == [0]  # data stays readable


async def test_a_cancelled_subscriber_leaves_no_waiter_behind() -> None:
    store = MemoryEventStore()
    it = store.subscribe_all()
    task = asyncio.ensure_future(anext(it))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store._waiters == []


async def test_registry_type_name_and_unregistered_names() -> None:
    store = MemoryEventStore(registry=contract_registry())
    await store.append("s", [ContractOrderPlaced("o", 1)], NO_STREAM)
    assert (await store.read("s"))[0].type_name == "contracts.OrderPlaced"

    class NotSerializable:
        pass

    with pytest.raises(SerializationError):
        await store.append("s", [NotSerializable()])


@pytest.mark.parametrize("expected", [-3, 1.0, "0", None])
async def test_malformed_expected_version_is_a_configuration_error(expected: object) -> None:
    store = MemoryEventStore()
    with pytest.raises(ConfigurationError):
        await store.append("s", [ContractOrderPlaced("o", 1)], expected)  # type: ignore[arg-type]


async def test_negative_max_count_is_rejected_and_negative_from_version_reads_all() -> None:
    store = MemoryEventStore()
    await store.append("s", [ContractOrderPlaced("o", i) for i in range(3)])
    with pytest.raises(ConfigurationError):
        await store.read("s", 0, -1)
    with pytest.raises(ConfigurationError):
        await store.read_all(1, -1)
    assert [e.version for e in await store.read("s", -5)] == [0, 1, 2]
    assert [e.position for e in await store.read_all(-5)] == [1, 2, 3]
    assert store.last_position == 3


async def test_reads_return_new_lists_that_callers_may_mutate() -> None:
    store = MemoryEventStore()
    await store.append("s", [ContractOrderPlaced("o", i) for i in range(3)])
    got = await store.read("s")
    got.clear()
    (await store.read_all()).clear()
    assert len(await store.read("s")) == 3
    assert len(await store.read_all()) == 3
    assert "streams=1" in repr(store)
