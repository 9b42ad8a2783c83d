"""Send-then-wait on a real workflow store: the handler of the workflow's ``wf.send`` publishes the
awaited event before the send returns, and the wait opened by ``wf.expect`` still gets it (used by
tests/{redis,nats,postgres}/test_workflows.py)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import msgspec

import catga
from catga.messages import Command, message_name, type_name
from catga.testing.contracts._util import eventually
from catga.workflows import COMPLETED, SLEEPING, Workflow, WorkflowStore


@message_name("wf_waits_shared.ShipParcel")
class ShipParcel(msgspec.Struct, Command[str], frozen=True):
    order_id: str
    publish: bool = True


@message_name("wf_waits_shared.ParcelShipped")
class ParcelShipped(msgspec.Struct, catga.Event, frozen=True):
    order_id: str
    tracking: str


async def check_send_then_wait(store: WorkflowStore, *, count: int = 8) -> None:
    """``count`` workflows at once: expect, send (its handler publishes at once), await; plus one
    whose event comes from outside while it sleeps, after its send."""
    app = catga.App(workflows=store)
    app.workflows.poll_interval = 0.05

    @app.handler
    async def ship(cmd: ShipParcel, ctx: catga.Context) -> str:
        if cmd.publish:
            (await ctx.publish(ParcelShipped(cmd.order_id, f"t-{cmd.order_id}"))).unwrap()
        return f"sent-{cmd.order_id}"

    @app.workflow(events=[ParcelShipped])
    async def deliver(wf: Workflow, order_id: str) -> str:
        shipped = await wf.expect(ParcelShipped, match={"order_id": order_id}, timeout=timedelta(hours=1))
        await wf.send(ShipParcel(order_id, publish=order_id != "later"))
        event = await shipped
        return "none" if event is None else event.tracking

    async with app:
        ids = [await app.start_workflow(deliver, f"o-{i}") for i in range(count)]
        later = await app.start_workflow(deliver, "later")

        async def sleeping() -> bool:
            found = await store.get(later)
            return found is not None and found.status == SLEEPING

        await eventually(sleeping, what=f"workflow {later} sleeps")
        (await app.publish(ParcelShipped("later", "t-later"))).unwrap()
        states = [await app.wait_workflow(wid) for wid in (*ids, later)]
    for i, state in enumerate(states):
        expected = "t-later" if state.id == later else f"t-o-{i}"
        assert (state.status, app.workflows.result(state)) == (COMPLETED, expected), state
        assert (state.wait_for, state.wait_spec) == ("", b"")
        history = await store.history(state.id)
        assert [(e.seq, e.kind) for e in history] == [(0, "wait"), (1, "event"), (2, "send")]
    assert await store.waiting(type_name(ParcelShipped)) == []


async def publish_from_another_process(url: str, table: str, workflow_id: str) -> None:
    """The child of the multi-process test: once ``workflow_id`` has armed its wait (its runner, in
    the parent, is then blocked in the send), publish its ParcelShipped in this process's app."""
    from catga.postgres import PostgresWorkflowStore
    from catga.workflows import RUNNING

    async with await PostgresWorkflowStore.connect(url, table=table) as store:

        async def armed() -> bool:
            found = await store.get(workflow_id)
            return found is not None and found.status == RUNNING and bool(found.wait_for)

        await eventually(armed, timeout=60, what=f"workflow {workflow_id} armed")
        app = catga.App(workflows=store)
        app.workflows.poll_interval = 3600.0
        app.workflows.listen(ParcelShipped)
        async with app:
            (await app.publish(ParcelShipped(workflow_id, f"t-{workflow_id}"))).unwrap()
    print("published", flush=True)


if __name__ == "__main__":
    import sys

    asyncio.run(publish_from_another_process(*sys.argv[1:4]))
