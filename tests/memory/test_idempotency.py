"""MemoryIdempotencyStore / MemoryInboxStore: the idempotency contract, from tasks and threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from catga.memory import MemoryIdempotencyStore, MemoryInboxStore
from catga.protocols import ClaimStatus
from catga.testing.contracts import IdempotencyStoreContract


class TestMemoryIdempotencyStore(IdempotencyStoreContract):
    @pytest.fixture
    async def idempotency_store(self) -> AsyncIterator[MemoryIdempotencyStore]:
        async with MemoryIdempotencyStore() as store:
            yield store


class TestMemoryInboxStore(IdempotencyStoreContract):
    @pytest.fixture
    async def idempotency_store(self) -> AsyncIterator[MemoryInboxStore]:
        async with MemoryInboxStore(shards=1) as store:
            yield store


def test_exactly_one_claim_wins_across_threads_and_loops() -> None:
    """8 threads, each with its own event loop running 8 tasks, claim the same 50 keys."""
    store = MemoryIdempotencyStore()
    keys = [f"msg.{i}" for i in range(50)]
    winners: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def run() -> None:
        async def task() -> None:
            for key in keys:
                claim = await store.claim(key, 30.0)
                if claim.status == ClaimStatus.CLAIMED:
                    with lock:
                        winners.append(key)
                    await asyncio.sleep(0)
                    await store.complete(key, key.encode())

        async def main() -> None:
            barrier.wait()
            await asyncio.gather(*(task() for _ in range(8)))

        asyncio.run(main())

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    assert sorted(winners) == sorted(keys)


def test_exactly_one_claim_wins_with_the_sync_core_from_threads() -> None:
    store = MemoryIdempotencyStore()
    results: list[ClaimStatus] = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def run() -> None:
        barrier.wait()
        claim = store.claim_nowait("contended", 30.0)
        with lock:
            results.append(claim.status)

    threads = [threading.Thread(target=run) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results.count(ClaimStatus.CLAIMED) == 1
    assert results.count(ClaimStatus.IN_PROGRESS) == 15
