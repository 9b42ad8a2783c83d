"""The in-memory testing kit of catga.testing: capture, given/when/then, FakeClock, MemoryBus."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

import catga
from catga import Command, Event, Query
from catga.clock import SYSTEM_CLOCK, get_clock, use_clock
from catga.errors import ConfigurationError, ConflictError, ValidationError
from catga.eventsourcing import Aggregate, applies
from catga.ids import default_generator, new_id
from catga.mediator import Mediator
from catga.memory import MemoryTransport
from catga.messages import new_metadata
from catga.pipeline import TimeoutBehavior
from catga.testing import FakeClock, MemoryBus, capture, given
from catga.testing.contracts._util import eventually


@dataclass(frozen=True)
class PlaceOrder(Command[str]):
    customer_id: str
    amount: int


@dataclass(frozen=True)
class GetTotal(Query[int]):
    order_id: str


@dataclass(frozen=True)
class OrderPlaced(Event):
    order_id: str
    total: int


@dataclass(frozen=True)
class Reserve(Command[None]):
    order_id: str


@dataclass(frozen=True)
class OrderShipped(Event):
    order_id: str


# -- capture -------------------------------------------------------------------------------------------


def _orders_app() -> catga.App:
    app = catga.App()

    @app.handler
    async def place(cmd: PlaceOrder, ctx: catga.Context) -> str:
        order_id = f"o-{cmd.customer_id}"
        await ctx.send(Reserve(order_id))
        await ctx.publish(OrderPlaced(order_id, cmd.amount))
        return order_id

    @app.handler
    async def reserve(cmd: Reserve) -> None:
        if cmd.order_id == "o-broke":
            raise ConflictError("out of stock")

    @app.handler
    async def total(query: GetTotal) -> int:
        return 42

    app.export(OrderPlaced)
    return app


async def test_capture_records_sends_publishes_and_exports_with_their_correlation() -> None:
    app = _orders_app()
    log = capture(app)
    async with app:
        placed = await app.send(PlaceOrder("c1", 42))
        await app.send(GetTotal("o-c1"))
        await app.publish(OrderShipped("o-c1"))

    assert placed.value == "o-c1"
    assert log.commands(PlaceOrder) == [PlaceOrder("c1", 42)]
    assert log.commands(Reserve) == [Reserve("o-c1")]
    assert log.commands(GetTotal) == [GetTotal("o-c1")]
    assert log.events(OrderPlaced) == [OrderPlaced("o-c1", 42)]
    assert log.exported_events(OrderPlaced) == [OrderPlaced("o-c1", 42)]
    assert log.exported_events(OrderShipped) == []  # not exported
    assert [type(e.message) for e in log.entries] == [
        PlaceOrder,
        Reserve,
        OrderPlaced,
        GetTotal,
        OrderShipped,
    ]
    root, reserve, event = log.entries[:3]
    assert reserve.metadata.correlation_id == root.metadata.message_id
    assert reserve.metadata.causation_id == root.metadata.message_id
    assert event.metadata.causation_id == root.metadata.message_id
    assert root.result is not None and root.result.value == "o-c1"
    assert all(e.result is not None and e.result.ok for e in log.entries)
    assert not any(e.inbound for e in log.entries)
    log.clear()
    assert log.entries == []


async def test_capture_keeps_failed_results() -> None:
    app = _orders_app()
    log = capture(app)
    async with app:
        result = await app.send(PlaceOrder("broke", 1))
    assert result.ok  # the place handler ignores the Reserve result
    assert log.of(log.commands(Reserve)[0]).result is not None
    failed = log.of(log.commands(Reserve)[0]).result
    assert failed is not None and failed.code == "conflict"
    with pytest.raises(LookupError, match="not dispatched"):
        log.of(Reserve("o-other"))


async def test_capture_after_the_first_dispatch_is_refused_with_the_reason() -> None:
    app = _orders_app()
    async with app:
        await app.send(GetTotal("x"))
        with pytest.raises(ConfigurationError, match="first message was dispatched"):
            capture(app)
    with pytest.raises(ConfigurationError, match=r"takes a catga\.App or a Mediator"):
        capture(object())  # type: ignore[arg-type]


async def test_capture_works_on_a_bare_mediator_and_wait_for_times_out_saying_how_many() -> None:
    mediator = Mediator()
    log = capture(mediator)

    @mediator.handler
    async def shipped(event: OrderShipped) -> None: ...

    await mediator.publish(OrderShipped("o-1"))
    assert await log.wait_for(OrderShipped) == [OrderShipped("o-1")]
    with pytest.raises(TimeoutError, match=r"1 of 2 OrderShipped handled within 0\.05 s"):
        await log.wait_for(OrderShipped, 2, timeout=0.05)


# -- given / when / then --------------------------------------------------------------------------------


class Order(Aggregate):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.total = 0
        self.shipped = False

    def ship(self) -> None:
        if self.total == 0:
            raise ValidationError("nothing to ship")
        if self.shipped:
            raise ConflictError(f"order {self.id} already shipped")
        self.raise_event(OrderShipped(self.id))

    def touch(self) -> None:
        """Idempotent: raises nothing."""

    @applies(OrderPlaced)
    def _placed(self, event: OrderPlaced) -> None:
        self.total = event.total

    @applies(OrderShipped)
    def _shipped(self, event: OrderShipped) -> None:
        self.shipped = True


def test_given_when_then_returns_the_aggregate_after_the_expected_events() -> None:
    order = given(Order, OrderPlaced("o-1", 42), id="o-1").when(lambda o: o.ship()).then(OrderShipped("o-1"))
    assert order.shipped and order.version == 0
    assert given(Order, OrderPlaced("o-1", 42)).when(lambda o: o.touch()).then_nothing().total == 42
    error = (
        given(Order, OrderPlaced("o-1", 42), OrderShipped("o-1"), id="o-1")
        .when(lambda o: o.ship())
        .then_raises(ConflictError, match="already shipped")
    )
    assert error.code == "conflict"
    factory_made = given(Order, factory=lambda i: Order(i.upper()), id="o-2").aggregate
    assert factory_made.id == "O-2" and factory_made.version == -1


def test_given_when_then_failures_say_what_differs() -> None:
    placed = given(Order, OrderPlaced("o-1", 42), id="o-1")
    with pytest.raises(AssertionError, match=r"expected: \[OrderShipped\(order_id='o-9'\)\]\nraised:   \["):
        placed.when(lambda o: o.ship()).then(OrderShipped("o-9"))
    with pytest.raises(AssertionError, match="the command raised ValidationError: nothing to ship") as info:
        given(Order).when(lambda o: o.ship()).then(OrderShipped("test-aggregate"))
    assert isinstance(info.value.__cause__, ValidationError)
    with pytest.raises(AssertionError, match="expected ConflictError, but the command succeeded"):
        given(Order, OrderPlaced("o-1", 42)).when(lambda o: o.ship()).then_raises(ConflictError)
    with pytest.raises(AssertionError, match="expected ConflictError, got ValidationError"):
        given(Order).when(lambda o: o.ship()).then_raises(ConflictError)
    with pytest.raises(AssertionError, match="does not match 'twice'"):
        given(Order).when(lambda o: o.ship()).then_raises(ValidationError, match="twice")


# -- the clock --------------------------------------------------------------------------------------------


async def test_fake_clock_drives_ids_and_created_at_and_wakes_sleepers_when_advanced() -> None:
    start = datetime(2025, 6, 1, tzinfo=UTC)
    clock = FakeClock(start)
    with use_clock(clock):
        assert get_clock() is clock
        first = new_id()
        assert default_generator().parse(first).timestamp_ms == int(start.timestamp() * 1000)
        assert new_metadata(1).created_at == start.timestamp()
        app = catga.App()
        seen: list[float] = []

        @app.handler
        async def shipped(event: OrderShipped, ctx: catga.Context) -> None:
            seen.append(ctx.metadata.created_at)

        async with app:
            await app.publish(OrderShipped("o-1"))
            clock.advance(90)
            await app.publish(OrderShipped("o-2"))
        assert seen == [start.timestamp(), start.timestamp() + 90]
        later = new_id()
        assert default_generator().parse(later).timestamp_ms == int(start.timestamp() * 1000) + 90_000

        woke: list[float] = []

        async def sleeper(seconds: float) -> None:
            await clock.sleep(seconds)
            woke.append(seconds)

        tasks = [asyncio.ensure_future(sleeper(s)) for s in (10, 5)]
        await clock.wait_for_sleepers(2)
        clock.advance(4)
        await asyncio.sleep(0)
        assert woke == [] and clock.sleeping == 2
        clock.advance(6)
        await asyncio.gather(*tasks)
        assert woke == [5, 10] and clock.monotonic() == 100.0  # in deadline order
        with pytest.raises(ValueError, match="only advances"):
            clock.advance(-1)
        clock.set_time(0)
        assert clock.time() == 0 and clock.monotonic() == 100.0
    assert get_clock() is SYSTEM_CLOCK
    assert abs(default_generator().parse(new_id()).timestamp_ms / 1000 - time.time()) < 60


def test_wall_clock_ids_resume_after_a_fake_clock_session_and_never_repeat() -> None:
    before = [new_id() for _ in range(50)]
    clock = FakeClock()
    assert clock.now() == datetime(2025, 1, 1, tzinfo=UTC)  # the default start: fixed, in the past
    with use_clock(clock):
        faked = [new_id() for _ in range(50)]
        with use_clock(clock):  # the same clock again: nothing restarts
            faked.append(new_id())
    after = [new_id() for _ in range(50)]
    assert len(set(before + faked + after)) == 151
    assert before == sorted(before) and faked == sorted(faked) and after == sorted(after)
    assert after[0] > before[-1]  # the wall clock's order went on where it stopped
    assert {default_generator().parse(i).timestamp_ms for i in faked} == {1_735_689_600_000}


async def test_fake_clock_refuses_naive_datetimes_and_wait_for_sleepers_times_out() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        FakeClock(datetime(2025, 1, 1))
    clock = FakeClock(0)
    with pytest.raises(TimeoutError, match="0 of 1 sleepers"):
        await clock.wait_for_sleepers(timeout=0.05)
    with pytest.raises(TypeError, match=r"not a catga\.clock\.Clock"), use_clock(object()):  # type: ignore[arg-type]
        pass
    assert get_clock() is SYSTEM_CLOCK


# -- two apps, one in-memory broker ---------------------------------------------------------------------


async def test_a_producer_and_a_consumer_app_on_one_memory_bus() -> None:
    bus = MemoryBus()
    orders = bus.app("orders")
    billing = bus.app("billing")
    billed: list[str] = []
    attempts: dict[str, int] = {}

    @orders.handler
    async def place(cmd: PlaceOrder, ctx: catga.Context) -> str:
        await ctx.publish(OrderPlaced(f"o-{cmd.customer_id}", cmd.amount))
        return f"o-{cmd.customer_id}"

    @billing.handler
    async def bill(event: OrderPlaced) -> None:
        attempts[event.order_id] = attempts.get(event.order_id, 0) + 1
        if event.total < 0:
            raise ValidationError("negative total")
        billed.append(event.order_id)

    orders.export(OrderPlaced)
    billing.consume(OrderPlaced, max_deliver=2)
    sent, received = capture(orders), capture(billing)
    async with bus.running(billing, orders) as running:
        assert running == (billing, orders) and orders.running and billing.running
        order_id = (await orders.send(PlaceOrder("c1", 42))).unwrap()
        [got] = await received.wait_for(OrderPlaced)
        assert got == OrderPlaced(order_id, 42)
        assert received.published[0].inbound and not received.published[0].exported
        assert sent.exported_events(OrderPlaced) == [OrderPlaced(order_id, 42)]
        assert received.published[0].metadata.message_id == sent.published[0].metadata.message_id
        await orders.send(PlaceOrder("c2", -1))

        async def dead_lettered() -> bool:  # delivered twice (10 ms backoff), then dead-lettered
            return await bus.dead_letters.count() == 1

        await eventually(dead_lettered, what="the failing event dead-lettered")
        letters = await bus.dead_letters.list()
        assert len(letters) == 1 and "negative total" in letters[0].error
    assert billed == [order_id] and attempts["o-c2"] == 2
    assert not orders.running and not billing.running
    with pytest.raises(ConfigurationError, match="do not pass transport="):
        bus.app("x", transport="memory://")


# -- the event loop's clock ---------------------------------------------------------------------------


async def _spin(condition: Callable[[], bool], what: str) -> None:
    """Let the loop run (no timer needed: the driven loop's timers are frozen) until ``condition``."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


@dataclass(frozen=True)
class Slow(Command[None]):
    pass


async def test_drive_loop_holds_asyncio_timers_until_the_clock_is_advanced() -> None:
    clock = FakeClock()
    loop = asyncio.get_running_loop()
    with clock.drive_loop():
        start = loop.time()
        slept = asyncio.ensure_future(asyncio.sleep(30))
        for _ in range(50):
            await asyncio.sleep(0)
        clock.advance(29.5)
        for _ in range(50):
            await asyncio.sleep(0)
        assert not slept.done()
        clock.advance(0.5)
        await slept
        assert loop.time() == pytest.approx(start + 30)
        with pytest.raises(RuntimeError, match="already driven"), clock.drive_loop():
            pass
        with pytest.raises(TimeoutError, match=r"0 of 1 sleepers after 0\.05 s"):
            await clock.wait_for_sleepers(timeout=0.05)  # a real-time deadline, loop timers frozen
    assert "time" not in vars(loop)


async def test_the_timeout_behavior_fires_when_the_driven_clock_passes_it() -> None:
    started = asyncio.Event()
    app = catga.App(behaviors=[TimeoutBehavior(5)])

    @app.handler
    async def slow(cmd: Slow) -> None:
        started.set()
        await asyncio.sleep(3600)

    clock = FakeClock()
    with clock.drive_loop():
        async with app:
            pending = asyncio.ensure_future(app.send(Slow()))
            await started.wait()
            clock.advance(4.9)
            for _ in range(50):
                await asyncio.sleep(0)
            assert not pending.done()
            clock.advance(0.1)
            result = await pending
    assert result.code == "timeout"


async def test_redelivery_backoff_waits_for_the_driven_clock() -> None:
    bus = MemoryBus(retry_backoff=10, retry_backoff_max=10)
    orders, billing = bus.app("orders"), bus.app("billing")
    attempts: list[float] = []
    loop = asyncio.get_running_loop()

    @billing.handler
    async def bill(event: OrderPlaced) -> None:
        attempts.append(loop.time())
        if len(attempts) == 1:
            raise ValidationError("first attempt fails")

    orders.export(OrderPlaced)
    billing.consume(OrderPlaced)
    clock = FakeClock()
    with clock.drive_loop():
        async with bus.running(billing, orders):
            await orders.publish(OrderPlaced("o-1", 1))
            transport = billing.transport
            assert isinstance(transport, MemoryTransport)
            await _spin(lambda: len(transport._timers) == 1, "the redelivery timer armed")
            clock.advance(9.9)
            for _ in range(50):
                await asyncio.sleep(0)
            assert len(attempts) == 1
            clock.advance(0.1)
            await _spin(lambda: len(attempts) == 2, "the redelivery")
    assert attempts[1] - attempts[0] == pytest.approx(10)


async def test_the_plugin_fixtures_give_a_fake_clock_and_a_bus(
    fake_clock: FakeClock, memory_bus: MemoryBus
) -> None:
    assert get_clock() is fake_clock
    assert default_generator().parse(new_id()).timestamp_ms == 1_735_689_600_000
    app = memory_bus.app("solo")
    assert isinstance(app.transport, MemoryTransport) and app.transport.broker is memory_bus.broker
