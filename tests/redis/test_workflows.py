"""The WorkflowStore contract on Redis (a single server, a cluster, Sentinel), its key layout, and an app
running workflows on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import catga
from catga.redis import RedisClient, RedisWorkflowStore
from catga.testing.contracts import WorkflowStoreContract
from catga.workflows import COMPLETED, HistoryEntry, Workflow, WorkflowInstance
from wf_waits_shared import check_send_then_wait

pytestmark = pytest.mark.redis


class TestRedisWorkflowStore(WorkflowStoreContract):
    @pytest.fixture
    async def workflow_stores(
        self, contract_redis_url: str, unique_name: str
    ) -> AsyncIterator[tuple[RedisWorkflowStore, RedisWorkflowStore]]:
        async with (
            RedisWorkflowStore.connect(contract_redis_url, prefix=unique_name) as a,
            RedisWorkflowStore.connect(contract_redis_url, prefix=unique_name) as b,
        ):
            yield a, b


async def test_keys_follow_the_documented_layout(redis_client: RedisClient) -> None:
    store = RedisWorkflowStore(redis_client)
    await store.create(WorkflowInstance(id="a.b", name="n", version=1, input=b"null"))
    token = await store.acquire("a.b", "r1", 30.0)
    assert token is not None
    await store.record("a.b", token, HistoryEntry(seq=0, kind="step", name="x"))
    p = redis_client.prefix
    keys = sorted(k.decode() for k in await redis_client.execute("KEYS", f"{p}:*"))
    assert keys == [f"{p}:wf-active", f"{p}:wf-all", f"{p}:wf-h:a.b", f"{p}:wf-st:pending", f"{p}:wf:a.b"]


async def test_an_app_runs_a_sleeping_workflow_on_redis(redis_client: RedisClient) -> None:
    store = RedisWorkflowStore(redis_client)
    app = catga.App(workflows=store)

    async def double(n: int) -> int:
        return n * 2

    @app.workflow
    async def flow(wf: Workflow, n: int) -> int:
        doubled = await wf.step(double, n)
        await wf.sleep(0.05)
        return doubled + 1

    async with app:
        state = await app.wait_workflow(await app.start_workflow(flow, 20, id="redis-1"))
    assert state.status == COMPLETED and app.workflows.result(state) == 41
    assert [e.kind for e in await store.history("redis-1")] == ["step", "sleep"]
    assert await store.list_instances("pending") == []
    assert [i.id for i in await store.list_instances(COMPLETED)] == ["redis-1"]


async def test_a_redis_url_builds_the_workflow_store(contract_redis_url: str, unique_name: str) -> None:
    app = catga.App(workflows=f"{contract_redis_url}?prefix={unique_name}")
    assert isinstance(app.workflows.store, RedisWorkflowStore)

    @app.workflow
    async def hello(wf: Workflow, name: str) -> str:
        return f"hello {name}"

    async with app:
        state = await app.wait_workflow(await app.start_workflow(hello, "redis"))
    assert app.workflows.result(state) == "hello redis"


async def test_a_wait_opened_before_the_send_gets_the_event_its_handler_publishes(
    redis_client: RedisClient,
) -> None:
    await check_send_then_wait(RedisWorkflowStore(redis_client))
