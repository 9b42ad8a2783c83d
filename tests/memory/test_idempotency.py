"""MemoryIdempotencyStore / MemoryInboxStore: the idempotency contract, from tasks and threads, and the
store's internals (TTLs on a fake clock, sweeps, key forms, thread races)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from catga.errors import ConfigurationError, InvalidIdentifierError
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


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_claim_lock_expires_on_the_fake_clock() -> None:
    clock = FakeClock()
    store = MemoryIdempotencyStore(clock=clock)
    assert store.claim_nowait("k", lock_ttl=10).status == ClaimStatus.CLAIMED
    clock.now += 9.99
    assert store.claim_nowait("k", lock_ttl=10).status == ClaimStatus.IN_PROGRESS
    clock.now += 0.01
    assert store.claim_nowait("k", lock_ttl=10).status == ClaimStatus.CLAIMED  # expired: free again
    assert store.claim_nowait("k").status == ClaimStatus.IN_PROGRESS


def test_completed_record_expires_after_its_ttl() -> None:
    clock = FakeClock()
    store = MemoryIdempotencyStore(clock=clock)
    store.claim_nowait("k", lock_ttl=1)
    store.complete_nowait("k", b"result", ttl=100)
    clock.now += 50  # past the claim lock, within the record ttl
    claim = store.claim_nowait("k")
    assert (claim.status, claim.result) == (ClaimStatus.COMPLETED, b"result")
    store.release_nowait("k")  # never removes a completed record
    assert store.claim_nowait("k").status == ClaimStatus.COMPLETED
    clock.now += 50
    assert store.claim_nowait("k").status == ClaimStatus.CLAIMED


def test_sweep_drops_expired_entries_and_keeps_live_ones() -> None:
    clock = FakeClock()
    store = MemoryIdempotencyStore(clock=clock, shards=4)
    for i in range(10):
        store.claim_nowait(f"short.{i}", lock_ttl=1)
    for i in range(5):
        store.claim_nowait(f"done.{i}")
        store.complete_nowait(f"done.{i}", b"x", ttl=1000)
    assert len(store) == 15
    clock.now += 2
    assert store.sweep() == 10
    assert len(store) == 5
    assert store.claim_nowait("done.3").status == ClaimStatus.COMPLETED
    assert store.sweep() == 0


def test_the_amortised_sweep_bounds_memory_under_steady_writes() -> None:
    clock = FakeClock()
    store = MemoryIdempotencyStore(clock=clock, shards=1, sweep_every=50)
    for i in range(5000):
        key = 10**6 + i
        assert store.claim_nowait(key, lock_ttl=1).status == ClaimStatus.CLAIMED
        store.complete_nowait(key, b"", ttl=1)
        clock.now += 0.1  # each record outlives ten more writes only
    assert len(store) <= 100  # without sweeps it would hold 5000


def test_live_entries_survive_amortised_sweeps() -> None:
    clock = FakeClock()
    store = MemoryIdempotencyStore(clock=clock, shards=1, sweep_every=8)
    store.claim_nowait("keep")
    store.complete_nowait("keep", b"kept", ttl=10_000)
    for i in range(200):
        store.claim_nowait(f"tmp.{i}", lock_ttl=0.5)
        clock.now += 1
    assert store.claim_nowait("keep").result == b"kept"


def test_int_keys_and_canonical_decimal_strings_are_the_same_record() -> None:
    store = MemoryIdempotencyStore()
    assert store.claim_nowait(123).status == ClaimStatus.CLAIMED
    store.complete_nowait("123", b"r")
    assert store.claim_nowait(123).result == b"r"
    assert store.claim_nowait("0123").status == ClaimStatus.CLAIMED  # not canonical: its own key
    assert store.claim_nowait("0").status == ClaimStatus.CLAIMED
    assert store.claim_nowait(0).status == ClaimStatus.IN_PROGRESS
    assert store.claim_nowait(-5).status == ClaimStatus.CLAIMED
    assert store.claim_nowait("-5").status == ClaimStatus.IN_PROGRESS


@pytest.mark.parametrize("bad", ["", "a b", "x*", "é", "a" * 201, True, 1.5, None])
def test_invalid_keys_are_rejected(bad: object) -> None:
    store = MemoryIdempotencyStore()
    with pytest.raises(InvalidIdentifierError):
        store.claim_nowait(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidIdentifierError):
        store.complete_nowait(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidIdentifierError):
        store.release_nowait(bad)  # type: ignore[arg-type]


def test_release_frees_only_unfinished_claims() -> None:
    store = MemoryIdempotencyStore()
    store.claim_nowait("a")
    store.release_nowait("a")
    store.release_nowait("never-claimed")
    assert store.claim_nowait("a").status == ClaimStatus.CLAIMED
    assert len(store) == 1


def test_many_threads_claiming_the_same_fresh_keys_have_exactly_one_winner_each() -> None:
    store = MemoryIdempotencyStore(shards=2)
    keys = list(range(10**9, 10**9 + 300))
    winners: list[list[int]] = [[] for _ in range(8)]
    barrier = threading.Barrier(8)

    def run(slot: int) -> None:
        barrier.wait()
        for key in keys:
            if store.claim_nowait(key).status == ClaimStatus.CLAIMED:
                winners[slot].append(key)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    won = sorted(k for w in winners for k in w)
    assert won == keys


def test_threads_racing_on_an_expired_key_have_exactly_one_winner() -> None:
    clock = FakeClock()
    store = MemoryIdempotencyStore(clock=clock)
    keys = [f"exp.{i}" for i in range(200)]
    for key in keys:
        store.claim_nowait(key, lock_ttl=1)
    clock.now += 5  # all expired: the locked slow path decides
    results: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def run() -> None:
        barrier.wait()
        mine = [k for k in keys if store.claim_nowait(k).status == ClaimStatus.CLAIMED]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == sorted(keys)


async def test_async_protocol_and_context_manager() -> None:
    async with MemoryInboxStore() as store:
        assert MemoryInboxStore is MemoryIdempotencyStore
        claims = await asyncio.gather(*(store.claim("m.1") for _ in range(10)))
        assert [c.status for c in claims].count(ClaimStatus.CLAIMED) == 1
        await store.complete("m.1", b"done")
        assert (await store.claim("m.1")).result == b"done"
        await store.release("m.1")
        assert "entries=1" in repr(store)
    assert len(store) == 0


@pytest.mark.parametrize("kwargs", [{"shards": 0}, {"sweep_every": 0}])
def test_invalid_options(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigurationError):
        MemoryIdempotencyStore(**kwargs)


def test_automatic_sweeps_wait_for_an_expiry_and_the_sweep_interval() -> None:
    clock = FakeClock()  # t = 1000
    store = MemoryIdempotencyStore(clock=clock, shards=1, sweep_every=10, sweep_interval=5.0)

    def claim(prefix: str, n: int, ttl: float) -> None:
        for i in range(n):
            assert store.claim_nowait(f"{prefix}.{i}", lock_ttl=ttl).status == ClaimStatus.CLAIMED

    claim("a", 10, 1)  # size 10 reached, but nothing can have expired yet: no scan
    assert len(store) == 10
    clock.now = 1002
    claim("b", 10, 100)  # size 20: the a.* claims expired: swept
    assert len(store) == 10
    clock.now = 1003
    claim("c", 15, 1)
    clock.now = 1005  # c.* expired, but the last sweep was 3 s ago: postponed
    claim("d", 5, 100)
    assert len(store) == 30
    clock.now = 1008
    claim("e", 15, 100)  # interval passed: c.* dropped
    assert len(store) == 30
    assert store.claim_nowait("c.0").status == ClaimStatus.CLAIMED
