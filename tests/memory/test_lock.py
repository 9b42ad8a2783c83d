"""MemoryLock: the lock contract plus threads and memory-only behaviour."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from catga.errors import ConfigurationError, LockNotOwnedError
from catga.memory import MemoryLock
from catga.testing.contracts import DistributedLockContract, WorkerIdLeaseContract


class TestMemoryLock(DistributedLockContract, WorkerIdLeaseContract):
    @pytest.fixture
    async def distributed_lock(self) -> AsyncIterator[MemoryLock]:
        async with MemoryLock() as lock:
            yield lock


def test_mutual_exclusion_across_threads_and_event_loops() -> None:
    lock = MemoryLock()
    counter = [0]
    tokens: list[int] = []

    def run(w: int) -> None:
        async def task() -> None:
            for _ in range(10):
                async with await lock.acquire("shared", ttl=10.0, wait=30.0) as lease:
                    tokens.append(lease.fencing_token)
                    value = counter[0]
                    await asyncio.sleep(0.0005)
                    counter[0] = value + 1

        async def main() -> None:
            await asyncio.gather(task(), task())

        asyncio.run(main())

    threads = [threading.Thread(target=run, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    assert counter[0] == 80
    assert sorted(tokens) == list(range(1, 81))


async def test_held_reports_ownership() -> None:
    lock = MemoryLock()
    lease = await lock.acquire("k", ttl=0.1)
    assert lease.held
    await asyncio.sleep(0.2)
    assert not lease.held


async def test_exiting_with_an_error_after_expiry_keeps_the_original_error() -> None:
    lock = MemoryLock()
    with pytest.raises(KeyError):
        async with await lock.acquire("k", ttl=0.05):
            await asyncio.sleep(0.1)
            raise KeyError("body failed")


async def test_exiting_cleanly_after_expiry_raises_not_owned() -> None:
    lock = MemoryLock()
    with pytest.raises(LockNotOwnedError):
        async with await lock.acquire("k", ttl=0.05):
            await asyncio.sleep(0.1)


async def test_aclose_stops_renewals() -> None:
    lock = MemoryLock()
    lease = await lock.acquire("k", ttl=0.1, auto_renew=True)
    assert len(lock._renewers) == 1
    await lock.aclose()
    assert not lock._renewers
    await asyncio.sleep(0.2)
    assert not lease.held


@pytest.mark.parametrize(("ttl", "wait"), [(0, 0), (-1, 0), (1, -1)])
async def test_bad_ttl_or_wait_is_rejected(ttl: float, wait: float) -> None:
    lock = MemoryLock()
    with pytest.raises(ConfigurationError):
        await lock.acquire("k", ttl=ttl, wait=wait)


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    lock = MemoryLock()
    lease = await lock.acquire("k", ttl=5.0)
    waiter = asyncio.ensure_future(lock.acquire("k", ttl=5.0, wait=5.0))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert lock._keys["k"].waiters == []
    await lease.release()
