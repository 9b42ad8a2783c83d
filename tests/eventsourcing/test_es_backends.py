"""The event-sourcing layer on every backend: it uses only the EventStore protocol."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
from es_domain import Account, AccountState, Deposited, Opened, Withdrawn

from catga.errors import ConcurrencyError
from catga.eventsourcing import (
    MemoryCheckpointStore,
    MemorySnapshotStore,
    Projection,
    ProjectionRunner,
    Repository,
    Upcasters,
    UpcastingRegistry,
    handles,
)
from catga.memory import MemoryEventStore
from catga.messages import message_name
from catga.protocols import EventStore, StoredEvent
from catga.serialization import TypeRegistry

OpenStore = Callable[[TypeRegistry], Awaitable[EventStore]]


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("nats", marks=pytest.mark.nats),
    ]
)
async def open_store(request: pytest.FixtureRequest, unique_name: str) -> AsyncIterator[OpenStore]:
    """Opens stores that share one isolated namespace of the backend (closed after the test)."""
    opened: list[Any] = []
    shared_memory = MemoryEventStore()

    async def open_(registry: TypeRegistry) -> EventStore:
        store: Any
        if request.param == "memory":
            store = shared_memory
        elif request.param == "redis":
            from catga.redis import RedisEventStore

            url = request.getfixturevalue("redis_url")
            store = RedisEventStore.connect(url, prefix=unique_name, registry=registry)
        else:
            from catga.nats import NatsEventStore

            url = request.getfixturevalue("nats_url")
            store = await NatsEventStore.connect(
                url, stream=unique_name, prefix=f"{unique_name}.ev", registry=registry, storage="memory"
            )
        opened.append(store)
        return store  # type: ignore[no-any-return]

    yield open_
    for store in opened:
        await store.aclose()


def account_registry() -> TypeRegistry:
    return TypeRegistry(types=[Opened, Deposited, Withdrawn])


async def test_repository_round_trip_and_concurrency(open_store: OpenStore) -> None:
    store = await open_store(account_registry())
    repo = Repository(store, Account, snapshots=MemorySnapshotStore(), snapshot_every=3)
    account = Account.open("1", "ada")
    account.deposit(10)
    assert await repo.save(account) == 1

    with pytest.raises(ConcurrencyError):
        await repo.save(Account.open("1", "bob"))  # new aggregate, stream exists

    fresh, stale = await repo.load("1"), await repo.load("1")
    fresh.withdraw(4)
    fresh.deposit(1)
    assert await repo.save(fresh) == 3  # crosses 3 events -> snapshot
    stale.deposit(100)
    with pytest.raises(ConcurrencyError) as info:
        await repo.save(stale)
    assert (info.value.expected_version, info.value.actual_version) == (1, 3)

    loaded = await repo.load("1")
    assert loaded.version == 3
    assert loaded.state == AccountState("ada", balance=7, deposits=2)
    assert [e.data for e in await store.read("Account-1")] == [
        Opened("ada"),
        Deposited(10),
        Withdrawn(amount=4),
        Deposited(1),
    ]


class Totals(Projection):
    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.handled: list[int] = []

    @handles(Deposited)
    def _deposited(self, event: Deposited, stored: StoredEvent) -> None:
        self.totals[stored.stream_id] = self.totals.get(stored.stream_id, 0) + event.amount
        self.handled.append(stored.position)


async def test_projection_catch_up_live_and_resume(open_store: OpenStore) -> None:
    store = await open_store(account_registry())
    repo = Repository(store, Account)
    checkpoints = MemoryCheckpointStore()
    for n in range(5):
        account = Account.open(f"a{n}", "ada")
        account.deposit(n + 1)
        await repo.save(account)

    first = Totals()
    async with ProjectionRunner(store, first, checkpoints, "totals", batch_size=3) as runner:
        await runner.wait_until_live(timeout=30)
        last = (await store.read("Account-a4"))[-1].position
        await runner.wait_for_position(last, timeout=30)
        account = await repo.load("a0")
        account.deposit(100)
        await repo.save(account)
        live_position = (await store.read("Account-a0"))[-1].position
        await runner.wait_for_position(live_position, timeout=30)
    assert first.totals["Account-a0"] == 101
    assert len(first.handled) == 6
    assert await checkpoints.get("totals") == live_position

    account = await repo.load("a1")
    account.deposit(1000)
    await repo.save(account)
    resumed_position = (await store.read("Account-a1"))[-1].position
    second = Totals()
    async with ProjectionRunner(store, second, checkpoints, "totals") as runner:
        await runner.wait_for_position(resumed_position, timeout=30)
    assert second.handled == [resumed_position]  # only the event appended while stopped
    assert second.totals == {"Account-a1": 1000}


async def test_lag_counts_events_not_yet_read(open_store: OpenStore) -> None:
    """The store tells its head (``last_position``: on NATS too), so the lag is real before a read."""
    store = await open_store(account_registry())
    repo = Repository(store, Account)
    for n in range(3):
        account = Account.open(f"l{n}", "ada")
        account.deposit(n + 1)
        await repo.save(account)
    head = (await store.read_all())[-1].position
    runner = ProjectionRunner(store, Totals(), MemoryCheckpointStore(), "lag")
    assert await runner.measure_lag() == head  # nothing read yet: the whole log is to go
    async with runner:
        await runner.wait_for_position(head, timeout=30)
        assert await runner.measure_lag() == 0


@message_name("PriceSet")
class PriceSetV1(msgspec.Struct, frozen=True):
    sku: str
    euros: int


class PriceSet(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sku: str
    cents: int


async def test_old_events_are_upcast_when_read_through_the_store(
    open_store: OpenStore, request: pytest.FixtureRequest
) -> None:
    if "memory" in request.node.callspec.id:
        # The memory store keeps objects, not bytes: there is nothing to upcast. Check that it still
        # accepts an upcasting registry and keeps events as given.
        store = await open_store(UpcastingRegistry(Upcasters(), types=[PriceSet]))
        await store.append("price-1", [PriceSet("x", 1)])
        assert [e.data for e in await store.read("price-1")] == [PriceSet("x", 1)]
        return

    old_writer = await open_store(TypeRegistry(types=[PriceSetV1]))
    await old_writer.append("price-1", [PriceSetV1("sku-1", 3)])

    upcasters = Upcasters()
    upcasters.register("PriceSet", 1, lambda d: {"sku": d["sku"], "cents": d["euros"] * 100})
    store = await open_store(UpcastingRegistry(upcasters, types=[PriceSet]))
    await store.append("price-1", [PriceSet("sku-1", 450)])

    events = await store.read("price-1")
    assert [e.data for e in events] == [PriceSet("sku-1", 300), PriceSet("sku-1", 450)]
    assert [e.type_name for e in events] == ["PriceSet", "PriceSet"]
    everything = [e.data for e in await store.read_all() if e.stream_id == "price-1"]
    assert everything == [PriceSet("sku-1", 300), PriceSet("sku-1", 450)]

    seen: list[PriceSet] = []

    async def consume() -> None:
        async for stored in store.subscribe_all():
            if stored.stream_id == "price-1":
                seen.append(stored.data)
                if len(seen) == 2:
                    return

    await asyncio.wait_for(consume(), 30)
    assert seen == [PriceSet("sku-1", 300), PriceSet("sku-1", 450)]
