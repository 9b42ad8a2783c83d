"""MemoryScheduleStore: the schedule store contract plus memory-only behaviour."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from catga.memory import MemoryScheduleStore
from catga.protocols import EVENT, Schedule
from catga.testing.contracts import ScheduleStoreContract


class TestMemoryScheduleStore(ScheduleStoreContract):
    @pytest.fixture
    async def schedule_stores(self) -> AsyncIterator[tuple[MemoryScheduleStore, MemoryScheduleStore]]:
        async with MemoryScheduleStore() as store:
            yield store, store


async def test_the_clock_decides_what_is_due() -> None:
    now = [1000.0]
    store = MemoryScheduleStore(clock=lambda: now[0])
    await store.add(Schedule(id="a", due_at=1010.0, kind=EVENT, type_name="T", body=b"x"))
    assert await store.claim_due() == []
    now[0] = 1009.999
    assert await store.claim_due() == []
    now[0] = 1010.0
    assert [s.id for s in await store.claim_due()] == ["a"]


async def test_callers_never_share_state_with_the_store() -> None:
    store = MemoryScheduleStore()
    s = Schedule(id="a", due_at=0.0, kind=EVENT, type_name="T", body=b"x", headers={"k": "1"})
    await store.add(s)
    s.headers["k"] = "changed"
    (claimed,) = await store.claim_due()
    claimed.headers["k2"] = "2"
    got = await store.get("a")
    assert got is not None and got.headers == {"k": "1"}
