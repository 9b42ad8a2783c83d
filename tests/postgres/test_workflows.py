"""The WorkflowStore contract on PostgreSQL, and an app running workflows on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import catga
from catga.errors import ConfigurationError
from catga.postgres import PostgresWorkflowStore
from catga.testing.contracts import WorkflowStoreContract
from catga.workflows import COMPLETED, Workflow

pytestmark = pytest.mark.postgres


class TestPostgresWorkflowStore(WorkflowStoreContract):
    record_reports_cancel = True

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
