"""The distributed-lock contract on a NATS KV-layout bucket, plus NATS-only behaviour."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from catga.errors import LockNotAcquiredError, LockNotOwnedError
from catga.nats import NatsConnection, NatsLock
from catga.testing.contracts import DistributedLockContract, WorkerIdLeaseContract

pytestmark = pytest.mark.nats


@pytest.fixture
async def distributed_lock(
    nats_connection: NatsConnection, unique_name: str, doomed_streams: list[str]
) -> AsyncIterator[NatsLock]:
    doomed_streams.append(f"KV_{unique_name}")
    async with NatsLock(nats_connection, bucket=unique_name) as lock:
        yield lock


class TestNatsLock(DistributedLockContract, WorkerIdLeaseContract):
    pass


async def test_two_lock_objects_exclude_each_other(
    distributed_lock: NatsLock, nats_connection: NatsConnection
) -> None:
    async with NatsLock(nats_connection, bucket=distributed_lock.bucket) as other:
        lease = await distributed_lock.acquire("k", ttl=5.0)
        with pytest.raises(LockNotAcquiredError):
            await other.acquire("k", ttl=5.0)
        await lease.release()
        taken = await other.acquire("k", ttl=5.0)
        assert taken.fencing_token > lease.fencing_token
        await taken.release()


async def test_extend_keeps_the_fencing_token(distributed_lock: NatsLock) -> None:
    lease = await distributed_lock.acquire("k", ttl=5.0)
    token = lease.fencing_token
    await lease.extend(5.0)
    await lease.extend(5.0)
    assert lease.fencing_token == token
    await lease.release()


async def test_release_waits_for_an_extend_in_flight(distributed_lock: NatsLock) -> None:
    lease = await distributed_lock.acquire("r", ttl=5.0)
    extending = asyncio.ensure_future(lease.extend(5.0))
    await asyncio.sleep(0)  # the extend's write is on the wire, its revision not known yet
    await lease.release()  # must delete the revision the extend created
    assert extending.done() and extending.exception() is None
    again = await distributed_lock.acquire("r", ttl=5.0, wait=0)
    await again.release()


async def test_release_after_auto_renewal_frees_the_key(distributed_lock: NatsLock) -> None:
    lease = await distributed_lock.acquire("r", ttl=1.5, auto_renew=True)
    async with asyncio.timeout(10):
        while lease._revision == lease.fencing_token:  # noqa: ASYNC110 - polling for the first renewal
            await asyncio.sleep(0.02)
    await lease.release()
    again = await distributed_lock.acquire("r", ttl=5.0, wait=0)
    await again.release()


async def test_closing_the_lock_stops_auto_renewal(
    nats_connection: NatsConnection, unique_name: str, doomed_streams: list[str]
) -> None:
    doomed_streams.append(f"KV_{unique_name}")
    lock = NatsLock(nats_connection, bucket=unique_name)
    lease = await lock.acquire("k", ttl=0.3, auto_renew=True)
    await lock.aclose()
    async with NatsLock(nats_connection, bucket=unique_name) as other:
        await asyncio.sleep(0.5)
        second = await other.acquire("k", ttl=5.0, wait=0)  # not renewed any more: expired
        with pytest.raises(LockNotOwnedError):
            await lease.extend(1.0)
        await second.release()
