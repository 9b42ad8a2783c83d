"""The WorkflowStore contract on PostgreSQL, and an app running workflows on it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import catga
from catga.errors import ConfigurationError
from catga.postgres import PostgresWorkflowStore
from catga.testing.contracts import WorkflowStoreContract
from catga.testing.contracts._util import eventually
from catga.workflows import COMPLETED, Workflow
from wf_waits_shared import ParcelShipped, ShipParcel, check_send_then_wait

pytestmark = pytest.mark.postgres


class TestPostgresWorkflowStore(WorkflowStoreContract):
    @pytest.fixture
    async def workflow_stores(
        self, pool: Any, postgres_url: str, unique_name: str
    ) -> AsyncIterator[tuple[PostgresWorkflowStore, PostgresWorkflowStore]]:
        table = f"wf_{unique_name}"
        async with (
            PostgresWorkflowStore(pool, table=table) as a,
            await PostgresWorkflowStore.connect(postgres_url, table=table) as b,
        ):
            yield a, b


async def test_an_app_runs_a_sleeping_workflow_on_postgres(pool: Any, unique_name: str) -> None:
    store = PostgresWorkflowStore(pool, table=f"wf_{unique_name}")
    app = catga.App(workflows=store)

    async def double(n: int) -> int:
        return n * 2

    @app.workflow
    async def flow(wf: Workflow, n: int) -> int:
        doubled = await wf.step(double, n)
        await wf.sleep(0.05)
        return doubled + 1

    async with app:
        state = await app.wait_workflow(await app.start_workflow(flow, 20, id="pg-1"))
    assert state.status == COMPLETED and app.workflows.result(state) == 41
    assert [e.kind for e in await store.history("pg-1")] == ["step", "sleep"]


def test_a_long_table_name_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="at most 55"):
        PostgresWorkflowStore(object(), table="t" * 60)


async def test_a_postgres_url_builds_the_workflow_store(postgres_url: str) -> None:
    app = catga.App(workflows=postgres_url)
    assert isinstance(app.workflows.store, PostgresWorkflowStore)
    assert app.workflows.store.table == "catga_workflows"

    @app.workflow
    async def hello(wf: Workflow, name: str) -> str:
        return f"hello {name}"

    async with app:
        state = await app.wait_workflow(await app.start_workflow(hello, "postgres"))
    assert app.workflows.result(state) == "hello postgres"


async def test_a_wait_opened_before_the_send_gets_the_event_its_handler_publishes(
    pool: Any,
    unique_name: str,
) -> None:
    await check_send_then_wait(PostgresWorkflowStore(pool, table=f"wf_{unique_name}"))


async def test_an_event_from_another_process_reaches_a_run_blocked_in_its_send(
    pool: Any, postgres_url: str, unique_name: str
) -> None:
    """The runner (here) opened the wait and is in its send; another process publishes the event
    then: its engine offers it to the running workflow, and the send's handler sees it recorded."""
    table = f"wf_{unique_name}"
    store = PostgresWorkflowStore(pool, table=table)
    app = catga.App(workflows=store)
    wid = f"mp-{unique_name}"

    @app.handler
    async def ship(cmd: ShipParcel) -> str:
        async def offered() -> bool:
            return any(e.seq == 1 for e in await store.history(wid))

        await eventually(offered, timeout=60, what="the other process's event offered")
        return "sent"

    @app.workflow(events=[ParcelShipped])
    async def deliver(wf: Workflow, order_id: str) -> str:
        shipped = await wf.expect(ParcelShipped, match={"order_id": order_id}, timeout=timedelta(hours=1))
        await wf.send(ShipParcel(order_id, publish=False))
        event = await shipped
        return "none" if event is None else event.tracking

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    async with app:
        await app.start_workflow(deliver, wid, id=wid)
        child = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).parents[1] / "wf_waits_shared.py"), postgres_url, table, wid,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        out, err = await child.communicate()
        assert child.returncode == 0 and out == b"published\n", err.decode()[-3000:]
        state = await app.wait_workflow(wid)
    assert state.status == COMPLETED and app.workflows.result(state) == f"t-{wid}"
    assert [(e.seq, e.kind) for e in await store.history(wid)] == [(0, "wait"), (1, "event"), (2, "send")]
