"""Conformance suite for :func:`catga.worker_lease.lease_worker_id` on a backend's lock."""

from __future__ import annotations

import asyncio

import pytest

from catga.errors import LockNotAcquiredError, LockNotOwnedError
from catga.ids import SnowflakeIdGenerator, SnowflakeLayout
from catga.protocols import DistributedLock
from catga.testing.contracts._util import unique
from catga.worker_lease import NoFreeWorkerIdError, WorkerIdLease, WorkerIdLostError, lease_worker_id

__all__ = ("WorkerIdLeaseContract",)

# Two worker bits: four ids, so "all taken" is cheap to reach.
_TINY = SnowflakeLayout(timestamp_bits=44, worker_bits=2, sequence_bits=17)


async def _lease_all(lock: DistributedLock, namespace: str) -> list[WorkerIdLease]:
    """Lease every worker id of the tiny layout in ``namespace``."""
    return [await lease_worker_id(lock, namespace=namespace, ttl=5.0, layout=_TINY) for _ in "abcd"]


class WorkerIdLeaseContract:
    """Worker id leasing through the backend's lock. Bind it with a ``distributed_lock`` fixture."""

    async def test_live_leases_never_share_an_id_and_all_taken_is_an_error(
        self, distributed_lock: DistributedLock
    ) -> None:
        ns = unique("w")
        leases = await _lease_all(distributed_lock, ns)
        try:
            assert sorted(lease.worker_id for lease in leases) == [0, 1, 2, 3]
            for lease in leases:
                assert lease.generator.worker_id == lease.worker_id
                assert lease.generator.parse(lease.generator.next_id()).worker_id == lease.worker_id
            with pytest.raises(NoFreeWorkerIdError) as info:
                await lease_worker_id(distributed_lock, namespace=ns, ttl=5.0, layout=_TINY)
            assert info.value.count == 4
            other = await lease_worker_id(distributed_lock, namespace=unique("w"), ttl=5.0, layout=_TINY)
            await other.aclose()  # another namespace has its own ids
        finally:
            for lease in leases:
                await lease.aclose()

    async def test_a_closed_lease_frees_its_id_and_its_generator_stops(
        self, distributed_lock: DistributedLock
    ) -> None:
        ns = unique("w")
        held = await _lease_all(distributed_lock, ns)
        freed = held.pop(1)
        await freed.aclose()
        assert not freed.valid
        with pytest.raises(WorkerIdLostError, match="closed"):
            freed.generator.next_id()
        again = await lease_worker_id(distributed_lock, namespace=ns, ttl=5.0, layout=_TINY)
        try:
            assert again.worker_id == freed.worker_id
        finally:
            for lease in [*held, again]:
                await lease.aclose()

    async def test_renewal_keeps_the_lease_past_its_ttl(self, distributed_lock: DistributedLock) -> None:
        ns = unique("w")
        lease = await lease_worker_id(distributed_lock, namespace=ns, ttl=0.6, layout=_TINY)
        try:
            await asyncio.sleep(1.5)  # more than twice the ttl: only renewals keep it
            assert lease.valid
            lease.generator.next_id()
            with pytest.raises(LockNotAcquiredError):  # nobody else can take the key
                await distributed_lock.acquire(f"worker-id.{ns}.{lease.worker_id}", ttl=1.0)
        finally:
            await lease.aclose()

    async def test_a_lease_that_stopped_renewing_stops_its_generator(
        self, distributed_lock: DistributedLock
    ) -> None:
        ns = unique("w")
        key_of = f"worker-id.{ns}."
        lease = await lease_worker_id(distributed_lock, namespace=ns, ttl=0.6, layout=_TINY)
        lease._renewer.cancel()  # a process frozen past its ttl (a long GC pause, a suspended VM)
        await asyncio.sleep(0.8)
        usurper = await distributed_lock.acquire(key_of + str(lease.worker_id), ttl=5.0)
        try:
            assert not lease.valid
            with pytest.raises(WorkerIdLostError, match="renewals failed"):
                lease.generator.next_id()
            await lease.aclose()  # releases nothing: the key is the usurper's now
            with pytest.raises(LockNotAcquiredError):
                await distributed_lock.acquire(key_of + str(lease.worker_id), ttl=1.0)
        finally:
            await usurper.release()

    async def test_a_renewal_that_finds_another_owner_stops_the_generator_at_once(
        self, distributed_lock: DistributedLock
    ) -> None:
        lease = await lease_worker_id(distributed_lock, namespace=unique("w"), ttl=0.6, layout=_TINY)
        real = lease._lease

        class TakenOver:  # what extend() says once another process holds the key
            async def extend(self, ttl: float) -> None:
                raise LockNotOwnedError("held by another owner")

            async def release(self) -> None:
                await real.release()

        try:
            lease._lease = TakenOver()  # type: ignore[assignment]
            await asyncio.sleep(0.4)  # one renewal (every ttl / 3)
            assert not lease.valid
            with pytest.raises(WorkerIdLostError, match="another owner"):
                lease.generator.next_id()
        finally:
            await lease.aclose()

    async def test_adopting_a_generator_keeps_ids_increasing(self, distributed_lock: DistributedLock) -> None:
        gen = SnowflakeIdGenerator(0, layout=_TINY)
        before = [gen.next_id() for _ in range(5)]
        lease = await lease_worker_id(distributed_lock, namespace=unique("w"), ttl=5.0, generator=gen)
        try:
            after = [gen.next_id() for _ in range(5)]
            assert before + after == sorted(set(before + after))
            assert {gen.parse(i).worker_id for i in after} == {lease.worker_id}
        finally:
            await lease.aclose()
