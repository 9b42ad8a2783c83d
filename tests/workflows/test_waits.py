"""Waits for events (``wf.expect``, ``wf.wait_for``) on the in-memory store: an event published
after the wait was opened is never lost, wherever it falls in the runner's way to sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import msgspec
import pytest

import catga
from catga.clock import use_clock
from catga.errors import BackendUnavailableError, ConfigurationError
from catga.memory import MemoryWorkflowStore
from catga.messages import Command, message_name, type_name
from catga.testing import FakeClock
from catga.testing.contracts._util import eventually
from catga.workflows import COMPLETED, FAILED, RUNNING, SLEEPING, HistoryEntry, Workflow

from .test_engine import fast, until_status


@message_name("test_waits.ShipOrder")
class ShipOrder(msgspec.Struct, Command[str], frozen=True):
    order_id: str


@message_name("test_waits.Shipped")
class Shipped(msgspec.Struct, catga.Event, frozen=True):
    order_id: str
    tracking: str


SHIPPED = type_name(Shipped)


def shipping_app(store: MemoryWorkflowStore | None = None, *, publish: bool = True) -> catga.App:
    """An app whose ShipOrder handler publishes Shipped before it returns (``publish``)."""
    app = fast(catga.App(workflows=store or MemoryWorkflowStore()))

    @app.handler
    async def ship(cmd: ShipOrder, ctx: catga.Context) -> str:
        if publish:
            (await ctx.publish(Shipped(cmd.order_id, f"t-{cmd.order_id}"))).unwrap()
        return f"sent-{cmd.order_id}"

    return app


def kinds(history: list[HistoryEntry]) -> list[tuple[int, str]]:
    return [(e.seq, e.kind) for e in history]


class SleepCounting(MemoryWorkflowStore):
    def __init__(self) -> None:
        super().__init__()
        self.sleeps = 0

    async def update(self, id: str, token: int, status: str, **kwargs: Any) -> None:
        self.sleeps += status == SLEEPING
        await super().update(id, token, status, **kwargs)


async def test_an_event_published_by_the_send_reaches_the_expectation() -> None:
    store = SleepCounting()
    app = shipping_app(store)

    @app.workflow(events=[Shipped])
    async def deliver(wf: Workflow, order_id: str) -> str:
        shipped = await wf.expect(Shipped, match={"order_id": order_id}, timeout=timedelta(hours=1))
        await wf.send(ShipOrder(order_id))  # the handler publishes Shipped inside this step
        event = await shipped
        assert event is not None
        return event.tracking

    async with app:
        state = await app.wait_workflow(await app.start_workflow(deliver, "o-1"))
        assert state.status == COMPLETED and app.workflows.result(state) == "t-o-1"
        assert (state.wait_for, state.wait_spec) == ("", b"")
        assert kinds(await app.workflows.history(state.id)) == [(0, "wait"), (1, "event"), (2, "send")]
        assert await app.workflows.store.waiting(SHIPPED) == []
    assert store.sleeps == 0  # the runner found the event before going to sleep


async def test_a_wait_sees_events_from_another_replica_while_the_run_goes_on() -> None:
    """Opened, then a step runs for a while: an event published meanwhile by another app on the
    same store (the runner holds the lease all along) is kept for the wait."""
    store = MemoryWorkflowStore()
    runner, other = shipping_app(store, publish=False), shipping_app(store, publish=False)
    opened, go_on = asyncio.Event(), asyncio.Event()

    async def busy(order_id: str) -> str:
        opened.set()
        await go_on.wait()
        return order_id

    @runner.workflow(events=[Shipped])
    async def deliver(wf: Workflow, order_id: str) -> str:
        shipped = await wf.expect(Shipped, match={"order_id": order_id})
        await wf.step(busy, order_id)
        event = await shipped
        return "none" if event is None else event.tracking

    other.workflows.listen(Shipped)
    async with runner, other:
        wid = await runner.start_workflow(deliver, "o-2")
        await opened.wait()
        found = await store.get(wid)
        assert found is not None and (found.status, found.wait_for) == (RUNNING, SHIPPED)
        assert await other.workflows.deliver_event(Shipped("o-3", "t-o-3")) == 0  # no match
        assert await other.workflows.deliver_event(Shipped("o-2", "t-o-2")) == 1
        assert await other.workflows.deliver_event(Shipped("o-2", "again")) == 0  # taken
        go_on.set()
        state = await runner.wait_workflow(wid)
    assert state.status == COMPLETED and runner.workflows.result(state) == "t-o-2"


class GapStore(MemoryWorkflowStore):
    """Runs ``hooks[name]`` (once) inside the runner's way to sleep: ``sleeping`` before the update
    to sleeping is stored, ``release`` before the lease of a sleeping workflow is released,
    ``expire`` before the runner records a wait's timeout."""

    def __init__(self) -> None:
        super().__init__()
        self.hooks: dict[str, Callable[[], Awaitable[None]]] = {}
        self.offered = asyncio.Event()

    async def _hook(self, name: str) -> None:
        hook = self.hooks.pop(name, None)
        if hook is not None:
            await hook()

    async def update(self, id: str, token: int, status: str, **kwargs: Any) -> None:
        if status == SLEEPING:
            await self._hook("sleeping")
        await super().update(id, token, status, **kwargs)

    async def release(self, id: str, token: int) -> None:
        found = await self.get(id)
        if found is not None and found.status == SLEEPING and found.wait_for:
            await self._hook("release")
        await super().release(id, token)

    async def record(self, id: str, token: int, entry: HistoryEntry) -> None:
        if entry.kind == "event" and entry.value == b"null":
            await self._hook("expire")
        await super().record(id, token, entry)

    async def offer(self, id: str, entry: HistoryEntry) -> bool:
        stored = await super().offer(id, entry)
        self.offered.set()
        return stored


def waiting_app(store: GapStore) -> catga.App:
    app = shipping_app(store, publish=False)

    @app.workflow(events=[Shipped])
    async def deliver(wf: Workflow, order_id: str) -> str:
        shipped = await wf.wait_for(Shipped, match={"order_id": order_id}, timeout=timedelta(hours=1))
        return "none" if shipped is None else shipped.tracking

    return app


async def test_an_event_published_while_the_runner_goes_to_sleep_is_not_lost() -> None:
    """Published after the runner found no event and before it stored ``sleeping``: the deliverer
    sees a running workflow and only offers; the runner's check after storing ``sleeping`` finds it."""
    store = GapStore()
    app = waiting_app(store)
    published: list[asyncio.Task[Any]] = []

    async def publish() -> None:  # from another task, as another request of the app would
        task = asyncio.create_task(app.publish(Shipped("o-4", "t-o-4")))
        published.append(task)
        (await task).unwrap()

    store.hooks["sleeping"] = publish
    async with app:
        state = await app.wait_workflow(await app.start_workflow("deliver", "o-4"))
    assert published and "sleeping" not in store.hooks
    assert state.status == COMPLETED and app.workflows.result(state) == "t-o-4"


async def test_an_event_published_after_the_runner_looked_again_wakes_it() -> None:
    """Published after the runner stored ``sleeping`` and checked once more, while it still holds
    the lease: the deliverer sees a sleeper after its offer and waits for the lease to wake it."""
    store = GapStore()
    app = waiting_app(store)
    published: list[asyncio.Task[Any]] = []

    async def publish() -> None:
        published.append(asyncio.create_task(app.publish(Shipped("o-5", "t-o-5"))))
        await store.offered.wait()  # offered (and the workflow is sleeping): now let go of the lease

    store.hooks["release"] = publish
    async with app:
        state = await app.wait_workflow(await app.start_workflow("deliver", "o-5"))
        (await published[0]).unwrap()
    assert state.status == COMPLETED and app.workflows.result(state) == "t-o-5"


async def test_an_event_that_beats_the_timeout_wins() -> None:
    """The deadline passed, but an event was offered before the runner recorded the timeout: one of
    them is the outcome (the first stored), and the runner returns it."""
    store = GapStore()
    app = shipping_app(store, publish=False)
    app.workflows.listen(Shipped)

    @app.workflow
    async def deliver(wf: Workflow, order_id: str) -> str:
        shipped = await wf.expect(Shipped, match={"order_id": order_id}, timeout=0)
        event = await shipped
        return "expired" if event is None else event.tracking

    async def offer() -> None:
        assert await app.workflows.deliver_event(Shipped("o-6", "t-o-6")) == 1

    store.hooks["expire"] = offer
    async with app:
        state = await app.wait_workflow(await app.start_workflow(deliver, "o-6"))
    assert "expire" not in store.hooks
    assert state.status == COMPLETED and app.workflows.result(state) == "t-o-6"


async def test_a_sleep_keeps_the_open_wait_without_waking_early() -> None:
    clock = FakeClock()
    with use_clock(clock):
        app = shipping_app(publish=False)

        @app.workflow(events=[Shipped])
        async def deliver(wf: Workflow, order_id: str) -> str:
            shipped = await wf.expect(Shipped, match={"order_id": order_id})
            await wf.sleep(timedelta(minutes=5))
            event = await shipped
            return "none" if event is None else event.tracking

        async with app:
            wid = await app.start_workflow(deliver, "o-7")
            await until_status(app, wid, SLEEPING)
            (await app.publish(Shipped("o-7", "t-o-7"))).unwrap()
            found = await app.workflow_status(wid)
            assert found is not None and found.status == SLEEPING  # the sleep goes on
            assert kinds(await app.workflows.history(wid)) == [(0, "wait"), (1, "event"), (2, "sleep")]
            clock.advance(301)
            state = await app.wait_workflow(wid)
    assert state.status == COMPLETED and app.workflows.result(state) == "t-o-7"


async def test_a_replay_returns_the_recorded_event_without_waiting() -> None:
    store = MemoryWorkflowStore()
    shipments: list[str] = []

    def build() -> catga.App:
        app = fast(catga.App(workflows=store))

        @app.handler
        async def ship(cmd: ShipOrder, ctx: catga.Context) -> str:
            shipments.append(cmd.order_id)
            (await ctx.publish(Shipped(cmd.order_id, f"t-{cmd.order_id}"))).unwrap()
            return f"sent-{cmd.order_id}"

        @app.workflow(events=[Shipped])
        async def deliver(wf: Workflow, order_id: str) -> str:
            shipped = await wf.expect(Shipped, match={"order_id": order_id}, timeout=30)
            await wf.send(ShipOrder(order_id))
            event = await shipped
            await wf.sleep(timedelta(hours=1))  # ends the run: the next one replays the wait
            return "none" if event is None else event.tracking

        return app

    first = build()
    async with first:
        wid = await first.start_workflow("deliver", "o-8")
        await until_status(first, wid, SLEEPING)
    history = await store.history(wid)
    assert kinds(history) == [(0, "wait"), (1, "event"), (2, "send"), (3, "sleep")]
    with use_clock(FakeClock(start=history[-1].at + 7200)):  # past the wait's timeout and the sleep
        second = build()
        async with second:
            state = await second.wait_workflow(wid)
    assert state.status == COMPLETED and second.workflows.result(state) == "t-o-8"
    assert shipments == ["o-8"]  # the send replayed from the history
    assert await store.history(wid) == history


async def test_one_open_wait_at_a_time() -> None:
    app = shipping_app(publish=False)

    @app.workflow(events=[Shipped])
    async def twice(wf: Workflow, how: str) -> None:
        await wf.expect(Shipped, timeout=1)
        if how == "expect":
            await wf.expect(Shipped)
        else:
            await wf.wait_for(Shipped)

    @app.workflow(events=[Shipped])
    async def racing(wf: Workflow, how: str) -> None:
        if how == "open":
            await wf.all(wf.expect(Shipped))
        else:
            shipped = await wf.expect(Shipped, timeout=1)
            await wf.any(shipped, wf.sleep(1))

    async with app:
        for how in ("expect", "wait_for"):
            state = await app.wait_workflow(await app.start_workflow(twice, how))
            assert state.status == FAILED and "still open; await its handle first" in state.error
        for how in ("open", "await"):
            state = await app.wait_workflow(await app.start_workflow(racing, how))
            assert state.status == FAILED and "not supported" in state.error


async def test_expect_refuses_a_bad_type_or_timeout() -> None:
    wf = Workflow(
        id="w", name="n", version=1, store=MemoryWorkflowStore(), token=1, history=[],
        mediator=catga.App().mediator, cancelled=lambda: asyncio.sleep(0, False),
    )  # fmt: skip
    with pytest.raises(ConfigurationError, match="Event subclass"):
        wf.expect(ShipOrder)  # type: ignore[type-var]
    with pytest.raises(ConfigurationError, match="finite time"):
        wf.expect(Shipped, timeout=-1)


async def test_a_wake_up_during_a_run_here_makes_it_look_again() -> None:
    """``resume`` while a run of the workflow is under way in this engine (an engine's delivery can
    wake a sleeper just as its runner here is about to end) makes that run try once more when it
    ends, instead of being dropped until the next sweep."""
    acquired: list[str] = []

    class Counting(MemoryWorkflowStore):
        async def acquire(self, id: str, owner: str, ttl: float) -> int | None:
            acquired.append(owner)
            return await super().acquire(id, owner, ttl)

    app = shipping_app(Counting(), publish=False)
    app.workflows.poll_interval = 60.0  # no sweep during the test
    entered, gate = asyncio.Event(), asyncio.Event()

    async def wait_at_the_gate() -> None:
        entered.set()
        await gate.wait()

    @app.workflow
    async def gated(wf: Workflow, _: None) -> str:
        await wf.step(wait_at_the_gate)
        return "done"

    async with app:
        wid = await app.start_workflow(gated)
        await entered.wait()  # the run holds the lease now: no sweep resumes it
        acquired.clear()
        app.workflows.resume(wid)  # a run is under way: it looks again when it ends
        gate.set()
        state = await app.wait_workflow(wid)
        await eventually(lambda: asyncio.sleep(0, not app.workflows._runs), what="the run ends")
    assert state.status == COMPLETED
    assert acquired == [app.workflows.owner]  # one more look (which found it finished)


async def test_a_run_that_stopped_before_arming_its_wait_arms_it_on_replay() -> None:
    """The store failed between recording the wait and arming it: the next run replays the wait
    and arms it before the send, so the event the send's handler publishes still counts."""

    class FailsToArm(MemoryWorkflowStore):
        failures = 1

        async def update(self, id: str, token: int, status: str, **kwargs: Any) -> None:
            if status == RUNNING and kwargs.get("wait_for") and self.failures:
                self.failures -= 1
                raise BackendUnavailableError("the store is down", backend="memory")
            await super().update(id, token, status, **kwargs)

    store = FailsToArm()
    app = shipping_app(store)

    @app.workflow(events=[Shipped])
    async def deliver(wf: Workflow, order_id: str) -> str:
        shipped = await wf.expect(Shipped, match={"order_id": order_id}, timeout=timedelta(hours=1))
        await wf.send(ShipOrder(order_id))
        event = await shipped
        return "none" if event is None else event.tracking

    async with app:
        state = await app.wait_workflow(await app.start_workflow(deliver, "o-9"))
    assert store.failures == 0
    assert state.status == COMPLETED and app.workflows.result(state) == "t-o-9"
