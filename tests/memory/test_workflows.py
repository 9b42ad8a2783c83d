"""MemoryWorkflowStore: the workflow store contract plus memory-only behaviour."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from catga.errors import ConfigurationError
from catga.memory import MemoryWorkflowStore
from catga.testing.contracts import WorkflowStoreContract
from catga.workflows import SLEEPING, WorkflowInstance


class TestMemoryWorkflowStore(WorkflowStoreContract):
    record_reports_cancel = True

    @pytest.fixture
    async def workflow_stores(self) -> AsyncIterator[tuple[MemoryWorkflowStore, MemoryWorkflowStore]]:
        async with MemoryWorkflowStore() as store:
            yield store, store


async def test_the_clock_decides_leases_and_wake_times() -> None:
    now = [1000.0]
    store = MemoryWorkflowStore(clock=lambda: now[0])
    await store.create(WorkflowInstance(id="w", name="n", version=1, input=b"null"))
    token = await store.acquire("w", "r1", 10.0)
    assert token is not None
    await store.update("w", token, SLEEPING, wake_at=1050.0)
    assert await store.acquire("w", "r2", 10.0) is None
    now[0] = 1010.0
    assert await store.due() == []  # the lease ended, but it sleeps until 1050
    now[0] = 1050.0
    assert await store.due() == ["w"]


async def test_unknown_status_is_refused() -> None:
    store = MemoryWorkflowStore()
    await store.create(WorkflowInstance(id="w", name="n", version=1, input=b"null"))
    token = await store.acquire("w", "r1", 10.0)
    assert token is not None
    with pytest.raises(ConfigurationError, match="unknown workflow status 'done'"):
        await store.update("w", token, "done")
    with pytest.raises(ConfigurationError, match="unknown workflow status"):
        await store.list_instances("done")
