"""The WorkflowStore contract on a NATS KV-layout bucket, and an app running workflows on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import catga
from catga.nats import NatsConnection, NatsWorkflowStore
from catga.testing.contracts import WorkflowStoreContract
from catga.workflows import COMPLETED, Workflow
from wf_waits_shared import check_send_then_wait

pytestmark = pytest.mark.nats


class TestNatsWorkflowStore(WorkflowStoreContract):
    @pytest.fixture
    async def workflow_stores(
        self, nats_connection: NatsConnection, nats_url: str, unique_name: str, doomed_streams: list[str]
    ) -> AsyncIterator[tuple[NatsWorkflowStore, NatsWorkflowStore]]:
        doomed_streams.append(f"KV_{unique_name}")
        async with await NatsConnection.connect(nats_url, name="catga-tests-b") as other:
            a = NatsWorkflowStore(nats_connection, bucket=unique_name, storage="memory")
            b = NatsWorkflowStore(other, bucket=unique_name, storage="memory")
            yield a, b
            await a.aclose()
            await b.aclose()


async def test_an_app_runs_a_sleeping_workflow_on_nats(
    nats_connection: NatsConnection, unique_name: str, doomed_streams: list[str]
) -> None:
    doomed_streams.append(f"KV_{unique_name}")
    store = NatsWorkflowStore(nats_connection, bucket=unique_name, storage="memory")
    app = catga.App(workflows=store)

    async def double(n: int) -> int:
        return n * 2

    @app.workflow
    async def flow(wf: Workflow, n: int) -> int:
        a, b = await wf.all(wf.step(double, n), wf.step(double, n + 1))  # concurrent records
        await wf.sleep(0.05)
        return a + b

    async with app:
        state = await app.wait_workflow(await app.start_workflow(flow, 20, id="nats.1"))
    assert state.status == COMPLETED and app.workflows.result(state) == 82
    assert [e.kind for e in await store.history("nats.1")] == ["step", "step", "sleep"]


async def test_a_nats_url_builds_the_workflow_store(
    nats_url: str, unique_name: str, doomed_streams: list[str]
) -> None:
    doomed_streams.append(f"KV_{unique_name}_workflows")
    app = catga.App(workflows=f"{nats_url}?prefix={unique_name}&storage=memory")
    assert isinstance(app.workflows.store, NatsWorkflowStore)
    assert app.workflows.store.bucket == f"{unique_name}_workflows"

    @app.workflow
    async def hello(wf: Workflow, name: str) -> str:
        return f"hello {name}"

    async with app:
        state = await app.wait_workflow(await app.start_workflow(hello, "nats"))
    assert app.workflows.result(state) == "hello nats"


async def test_a_wait_opened_before_the_send_gets_the_event_its_handler_publishes(
    nats_connection: NatsConnection, unique_name: str, doomed_streams: list[str]
) -> None:
    doomed_streams.append(f"KV_{unique_name}")
    await check_send_then_wait(NatsWorkflowStore(nats_connection, bucket=unique_name, storage="memory"))
