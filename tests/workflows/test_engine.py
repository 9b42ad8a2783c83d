"""The workflow engine on the in-memory store: replay, compensation, sleep, cancel, versions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import msgspec
import pytest

import catga
from catga.errors import BackendUnavailableError, ConfigurationError
from catga.memory import MemoryWorkflowStore
from catga.messages import Command, type_name
from catga.testing.contracts._util import eventually
from catga.workflows import (
    CANCELLED,
    COMPENSATED,
    COMPLETED,
    FAILED,
    SLEEPING,
    HistoryEntry,
    Workflow,
    current_step_key,
)


@dataclass
class Order:
    id: str
    total: int


class Charge(msgspec.Struct, Command[str], frozen=True):
    order_id: str
    amount: int


class Refund(msgspec.Struct, Command[None], frozen=True):
    order_id: str


def fast(app: catga.App) -> catga.App:
    """Sweep often and take over ended leases quickly (tests do not wait a second per hand-over)."""
    app.workflows.poll_interval = 0.05
    app.workflows.lease = 1.0
    return app


async def until_status(app: catga.App, wid: str, status: str) -> None:
    async def reached() -> bool:
        state = await app.workflow_status(wid)
        return state is not None and state.status == status

    await eventually(reached, what=f"workflow {wid} is {status}")


async def test_steps_run_once_and_the_result_is_recorded() -> None:
    calls: list[str] = []
    app = fast(catga.App())

    async def reserve(order: Order) -> list[int]:
        calls.append(f"reserve {order.id}")
        return [1, 2]

    @app.workflow
    async def place(wf: Workflow, order: Order) -> dict[str, Any]:
        stock = await wf.step(reserve, order)
        a, b = await wf.all(wf.step(reserve, Order("x", 1)), wf.step(reserve, Order("y", 2)))
        return {"order": order.id, "stock": stock, "both": [a, b]}

    async with app:
        wid = await app.start_workflow("place", Order("o-1", 5), id="place-o-1")
        assert wid == "place-o-1"
        assert await app.start_workflow(place, Order("o-2", 5), id="place-o-1") == wid  # idempotent
        state = await app.wait_workflow(wid)
        assert state.status == COMPLETED
        assert app.workflows.result(state) == {"order": "o-1", "stock": [1, 2], "both": [[1, 2], [1, 2]]}
        assert sorted(calls) == ["reserve o-1", "reserve x", "reserve y"]
        history = await app.workflows.history(wid)
        assert [(e.seq, e.kind, e.name) for e in history] == [
            (0, "step", reserve.__qualname__),
            (1, "step", reserve.__qualname__),
            (2, "step", reserve.__qualname__),
        ]
        assert [i.id for i in await app.workflows.list_workflows(COMPLETED)] == [wid]


async def test_a_second_runner_replays_recorded_steps_and_finishes() -> None:
    store = MemoryWorkflowStore()
    effects: list[str] = []
    blocked = asyncio.Event()
    release = asyncio.Event()

    def build() -> catga.App:
        app = fast(catga.App(workflows=store))

        async def first(order: Order) -> int:
            effects.append("first")
            return order.total * 2

        async def second(doubled: int) -> int:
            effects.append(f"second:{current_step_key()}")
            blocked.set()
            await release.wait()
            return doubled + 1

        @app.workflow
        async def flow(wf: Workflow, order: Order) -> int:
            doubled = await wf.step(first, order)
            return await wf.step(second, doubled)

        return app

    one, two = build(), build()
    async with one:
        wid = await one.start_workflow("flow", Order("o", 21), id="flow-1")
        await blocked.wait()  # the first runner is inside step 1: kill it there
    assert effects == ["first", "second:flow-1:1"]
    release.set()
    async with two:
        state = await two.wait_workflow(wid)
    assert state.status == COMPLETED
    assert two.workflows.result(state) == 43
    assert effects == ["first", "second:flow-1:1", "second:flow-1:1"]  # step 0 replayed, not run


async def test_a_failure_runs_compensations_in_reverse_once() -> None:
    undone: list[str] = []
    app = fast(catga.App())

    async def book(what: str) -> str:
        return f"booked {what}"

    async def unbook(booking: str) -> None:
        undone.append(booking)

    async def pay() -> None:
        raise RuntimeError("card declined")

    @app.workflow
    async def trip(wf: Workflow, _: None) -> None:
        await wf.step(book, "flight", compensate=unbook)
        await wf.step(book, "hotel", compensate=unbook)
        await wf.step(book, "no undo")
        await wf.step(pay)

    async with app:
        state = await app.wait_workflow(await app.start_workflow("trip"))
    assert state.status == COMPENSATED
    assert "card declined" in state.error and "RuntimeError" in state.error
    assert undone == ["booked hotel", "booked flight"]


async def test_a_failing_compensation_fails_the_workflow_with_the_reason() -> None:
    app = fast(catga.App())
    app.workflows.retry_backoff = 0.01
    tries: list[int] = []

    async def book() -> int:
        return 1

    async def unbook(_: int) -> None:
        tries.append(1)
        raise ValueError("the hotel is gone")

    async def pay() -> None:
        raise RuntimeError("declined")

    @app.workflow
    async def trip(wf: Workflow, _: None) -> None:
        await wf.step(book, compensate=unbook)
        await wf.step(pay)

    async with app:
        state = await app.wait_workflow(await app.start_workflow("trip"))
    assert state.status == FAILED
    assert "the hotel is gone" in state.error and "declined" in state.error
    assert len(tries) == 4  # one try and three retries


async def test_sleep_ends_the_run_and_the_scheduler_wakes_it() -> None:
    app = fast(catga.App())
    app.workflows.poll_interval = 60.0  # only the scheduler's timer can wake it in time

    @app.workflow
    async def nap(wf: Workflow, seconds: float) -> str:
        await wf.sleep(timedelta(seconds=seconds))
        return "rested"

    async with app:
        wid = await app.start_workflow(nap, 0.3)

        await until_status(app, wid, SLEEPING)
        # no task runs for a sleeping workflow (the run stores "sleeping", then releases its lease
        # and ends: wait for that, without a time bound of its own)
        await eventually(lambda: asyncio.sleep(0, not app.workflows._runs), what="the run ends")
        state = await app.workflow_status(wid)
        assert state is not None and state.status == SLEEPING
        state = await app.wait_workflow(wid)
    assert state.status == COMPLETED and app.workflows.result(state) == "rested"


async def test_cancel_a_sleeping_workflow_compensates_it() -> None:
    undone: list[int] = []
    app = fast(catga.App())

    async def hold() -> int:
        return 7

    async def unhold(n: int) -> None:
        undone.append(n)

    @app.workflow
    async def waiting(wf: Workflow, _: None) -> None:
        await wf.step(hold, compensate=unhold)
        await wf.sleep(3600)
        await wf.step(hold)

    async with app:
        wid = await app.start_workflow(waiting)

        await until_status(app, wid, SLEEPING)
        assert await app.cancel_workflow(wid) is True
        state = await app.wait_workflow(wid)
        assert await app.cancel_workflow(wid) is False
    assert state.status == CANCELLED and "cancelled" in state.error
    assert undone == [7]


async def test_send_runs_the_handler_once_and_compensates_with_a_command() -> None:
    charged: list[int] = []
    refunded: list[str] = []
    app = fast(catga.App())

    @app.handler
    async def charge(cmd: Charge, ctx: catga.Context) -> str:
        charged.append(ctx.message_id)
        return f"p-{cmd.order_id}"

    @app.handler
    async def refund(cmd: Refund) -> None:
        refunded.append(cmd.order_id)

    async def fail(payment: str) -> None:
        raise RuntimeError(f"cannot ship after {payment}")

    @app.workflow
    async def order(wf: Workflow, order_id: str) -> None:
        payment = await wf.send(Charge(order_id, 5), compensate=Refund(order_id))
        await wf.step(fail, payment)

    async with app:
        state = await app.wait_workflow(await app.start_workflow(order, "o-9", id="order-o-9"))
    assert state.status == COMPENSATED and "cannot ship after p-o-9" in state.error
    assert charged == [catga.workflows.step_message_id("order-o-9", 0)]
    assert refunded == ["o-9"]


async def test_any_records_the_winner() -> None:
    app = fast(catga.App())
    slow_started: list[int] = []

    async def quick() -> str:
        return "quick"

    async def slow() -> str:
        slow_started.append(1)
        await asyncio.Event().wait()
        return "never"

    @app.workflow
    async def race(wf: Workflow, _: None) -> list[Any]:
        index, value = await wf.any(wf.step(slow), wf.step(quick))
        timeout_index, _ = await wf.any(wf.step(slow), wf.sleep(0.05))
        return [index, value, timeout_index]

    async with app:
        state = await app.wait_workflow(await app.start_workflow(race))
    assert state.status == COMPLETED and app.workflows.result(state) == [1, "quick", 1]


async def test_changed_code_is_reported_not_misreplayed() -> None:
    store = MemoryWorkflowStore()

    async def a() -> int:
        return 1

    async def b() -> int:
        return 2

    old = fast(catga.App(workflows=store))

    @old.workflow(name="flow")
    async def flow_v1(wf: Workflow, _: None) -> None:
        await wf.step(a)
        await wf.sleep(3600)

    async with old:
        wid = await old.start_workflow("flow")

        await until_status(old, wid, SLEEPING)
    new = fast(catga.App(workflows=store))

    @new.workflow(name="flow")
    async def flow_changed(wf: Workflow, _: None) -> None:
        await wf.step(b)

    async with new:
        await store.request_cancel(wid)  # make it due now: its replay meets the changed code
        state = await new.wait_workflow(wid)
    assert state.status == FAILED
    assert (
        "not deterministic at step 0" in state.error and "step " in state.error and "version=" in state.error
    )


async def test_running_workflows_resume_on_the_version_that_started_them() -> None:
    store = MemoryWorkflowStore()
    ran: list[str] = []

    def build(versions: tuple[int, ...]) -> catga.App:
        app = fast(catga.App(workflows=store))

        async def step(label: str) -> str:
            ran.append(label)
            return label

        if 1 in versions:

            @app.workflow(name="flow", version=1)
            async def v1(wf: Workflow, _: None) -> str:
                await wf.step(step, "v1-a")
                await wf.sleep(0.2)
                return await wf.step(step, "v1-b")

        if 2 in versions:

            @app.workflow(name="flow", version=2)
            async def v2(wf: Workflow, _: None) -> str:
                return await wf.step(step, "v2")

        return app

    first = build((1,))
    async with first:
        old = await first.start_workflow("flow")
    second = build((1, 2))
    async with second:
        new = await second.start_workflow("flow")
        assert (await second.wait_workflow(old)).version == 1
        assert second.workflows.result(await second.wait_workflow(old)) == "v1-b"
        assert (await second.wait_workflow(new)).version == 2
    assert sorted(ran) == ["v1-a", "v1-b", "v2"]


async def test_a_missing_version_fails_the_workflow_clearly() -> None:
    store = MemoryWorkflowStore()
    first = fast(catga.App(workflows=store))

    @first.workflow(name="flow", version=3)
    async def v3(wf: Workflow, _: None) -> None:
        await wf.sleep(0.1)

    async with first:
        wid = await first.start_workflow("flow")
    second = fast(catga.App(workflows=store))

    @second.workflow(name="flow", version=4)
    async def v4(wf: Workflow, _: None) -> None:
        return None

    async with second:
        state = await second.wait_workflow(wid)
    assert state.status == FAILED and "version 3 is not registered" in state.error


async def test_bad_use_is_refused_with_a_reason() -> None:
    app = catga.App()

    def not_async(wf: Workflow, _: None) -> None:
        return None

    with pytest.raises(ConfigurationError, match="async def"):
        app.workflow(not_async)

    @app.workflow
    async def ok(wf: Workflow, _: None) -> None:
        return None

    with pytest.raises(ConfigurationError, match="needs a running app"):
        await app.start_workflow(ok)
    async with app:
        with pytest.raises(ConfigurationError, match="no workflow named 'nope'"):
            await app.start_workflow("nope")
        with pytest.raises(catga.errors.InvalidIdentifierError):
            await app.start_workflow(ok, id="a b")
    with pytest.raises(ConfigurationError, match="only known inside a workflow step"):
        current_step_key()


async def test_a_step_result_that_is_not_data_fails_the_step() -> None:
    app = fast(catga.App())

    async def weird() -> object:
        return object()

    @app.workflow
    async def flow(wf: Workflow, _: None) -> None:
        await wf.step(weird)

    async with app:
        state = await app.wait_workflow(await app.start_workflow(flow))
    assert state.status == FAILED and "cannot be recorded as JSON" in state.error


def test_workflows_default_to_memory_and_take_a_memory_url() -> None:
    assert isinstance(catga.App().workflows.store, MemoryWorkflowStore)
    assert isinstance(catga.App(workflows="memory://").workflows.store, MemoryWorkflowStore)
    with pytest.raises(ConfigurationError):
        catga.App(workflows="ftp://example")


class Paid(msgspec.Struct, catga.Event, frozen=True):
    order_id: str
    amount: int


async def test_wait_for_gets_the_matching_event() -> None:
    app = fast(catga.App())

    @app.workflow(events=[Paid])
    async def checkout(wf: Workflow, order_id: str) -> int:
        paid = await wf.wait_for(Paid, match={"order_id": order_id}, timeout=timedelta(hours=1))
        assert paid is not None
        return paid.amount

    async with app:
        wid = await app.start_workflow(checkout, "o-1")
        await until_status(app, wid, SLEEPING)
        state = await app.workflow_status(wid)
        assert state is not None and state.wait_for == type_name(Paid)
        (await app.publish(Paid("o-2", 5))).unwrap()  # another order: not for this workflow
        (await app.publish(Paid("o-1", 30))).unwrap()
        state = await app.wait_workflow(wid)
        assert state.status == COMPLETED and app.workflows.result(state) == 30
        (await app.publish(Paid("o-1", 99))).unwrap()  # after the wait: nobody waits any more
        history = await app.workflows.history(wid)
        assert [(e.kind, e.name) for e in history] == [("wait", type_name(Paid)), ("event", type_name(Paid))]


async def test_wait_for_times_out_through_the_scheduler() -> None:
    app = fast(catga.App())
    app.workflows.poll_interval = 60.0  # only the scheduler's timer can wake it in time

    @app.workflow(events=[Paid])
    async def checkout(wf: Workflow, order_id: str) -> str:
        paid = await wf.wait_for(Paid, match={"order_id": order_id}, timeout=0.2)
        return "paid" if paid else "expired"

    async with app:
        state = await app.wait_workflow(await app.start_workflow(checkout, "o-1"))
    assert state.status == COMPLETED and app.workflows.result(state) == "expired"


async def test_an_event_published_by_another_replica_resumes_the_workflow() -> None:
    store = MemoryWorkflowStore()

    def build() -> catga.App:
        app = fast(catga.App(workflows=store))

        @app.workflow(events=[Paid])
        async def checkout(wf: Workflow, order_id: str) -> int:
            paid = await wf.wait_for(Paid, match={"order_id": order_id})
            return 0 if paid is None else paid.amount

        return app

    runner, other = build(), build()
    async with runner, other:
        wid = await runner.start_workflow("checkout", "o-7")
        await until_status(runner, wid, SLEEPING)
        (await other.publish(Paid("o-7", 12))).unwrap()
        state = await runner.wait_workflow(wid)
    assert state.status == COMPLETED and runner.workflows.result(state) == 12


async def test_cancel_a_workflow_waiting_for_an_event() -> None:
    app = fast(catga.App())

    @app.workflow(events=[Paid])
    async def checkout(wf: Workflow, order_id: str) -> None:
        await wf.wait_for(Paid, match={"order_id": order_id})

    async with app:
        wid = await app.start_workflow(checkout, "o-1")
        await until_status(app, wid, SLEEPING)
        assert await app.cancel_workflow(wid)
        state = await app.wait_workflow(wid)
        assert state.status == CANCELLED
        assert await app.workflows.store.waiting(type_name(Paid)) == []


async def test_wait_for_refuses_what_it_cannot_do() -> None:
    app = fast(catga.App())

    @app.workflow
    async def bad(wf: Workflow, what: str) -> None:
        if what == "type":
            await wf.wait_for(Order)  # type: ignore[type-var]
        else:
            await wf.all(wf.wait_for(Paid))

    async with app:
        for what in ("type", "race"):
            state = await app.wait_workflow(await app.start_workflow(bad, what))
            assert state.status == FAILED
            assert ("Event subclass" if what == "type" else "not supported") in state.error


class FlakyStore(MemoryWorkflowStore):
    """Its next ``failures`` records fail as if the server were down."""

    failures = 0

    async def record(self, id: str, token: int, entry: HistoryEntry) -> None:
        if self.failures:
            self.failures -= 1
            raise BackendUnavailableError("the store is down (test)")
        await super().record(id, token, entry)


async def test_a_store_failure_is_not_the_workflows_failure() -> None:
    store = FlakyStore()
    app = fast(catga.App(workflows=store))
    undone: list[int] = []

    async def one() -> int:
        return 1

    async def undo(n: int) -> None:
        undone.append(n)

    @app.workflow
    async def flow(wf: Workflow, _: None) -> int:
        try:
            a = await wf.step(one, compensate=undo)
            b = await wf.step(one)
        except Exception:  # a workflow catching everything does not catch the store's failure
            return -1
        return a + b

    async with app:
        store.failures = 1  # step 0's record fails: the run stops, the sweep runs it again
        state = await app.wait_workflow(await app.start_workflow(flow))
    assert state.status == COMPLETED and app.workflows.result(state) == 2
    assert undone == []
    assert [e.seq for e in await store.history(state.id)] == [0, 1]


async def test_an_event_starts_a_workflow_once_per_id() -> None:
    app = fast(catga.App())
    runs: list[str] = []

    async def note(order_id: str) -> None:
        runs.append(order_id)

    @app.workflow
    async def fulfil(wf: Workflow, paid: Paid) -> int:
        await wf.step(note, paid.order_id)
        return paid.amount

    app.workflows.start_on(Paid, fulfil, id=lambda e: f"fulfil-{e.order_id}")
    async with app:
        (await app.publish(Paid("o-1", 30))).unwrap()
        (await app.publish(Paid("o-1", 30))).unwrap()  # the same order again: no second workflow
        state = await app.wait_workflow("fulfil-o-1")
    assert state.status == COMPLETED and app.workflows.result(state) == 30
    assert runs == ["o-1"]
    with pytest.raises(ConfigurationError, match="Event subclass"):
        app.workflows.start_on(Charge, fulfil, id=str)  # type: ignore[type-var]


async def test_compensations_follow_the_step_order_not_completion_order() -> None:
    app = fast(catga.App())
    undone: list[str] = []
    b_done = asyncio.Event()

    async def slow_a() -> str:
        await b_done.wait()  # finishes after b
        return "a"

    async def fast_b() -> str:
        b_done.set()
        return "b"

    async def undo(name: str) -> None:
        undone.append(name)

    async def fail() -> None:
        raise RuntimeError("no")

    @app.workflow
    async def flow(wf: Workflow, _: None) -> None:
        await wf.all(wf.step(slow_a, compensate=undo), wf.step(fast_b, compensate=undo))
        await wf.step(fail)

    async with app:
        state = await app.wait_workflow(await app.start_workflow(flow))
    assert state.status == COMPENSATED
    assert undone == ["b", "a"]  # reverse step order (b is step 1, a step 0)
