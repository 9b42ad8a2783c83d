"""The DistributedLock contract on Redis, plus Redis-only checks (fencing counter, renewal, ownership)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from catga.errors import ConfigurationError, LockNotAcquiredError, LockNotOwnedError
from catga.redis import RedisClient, RedisLock
from catga.testing.contracts.lock import DistributedLockContract
from catga.testing.contracts.worker_lease import WorkerIdLeaseContract

pytestmark = pytest.mark.redis


class TestRedisLock(DistributedLockContract, WorkerIdLeaseContract):
    @pytest.fixture
    async def distributed_lock(self, contract_redis_client: RedisClient) -> AsyncIterator[RedisLock]:
        async with RedisLock(contract_redis_client) as lock:
            yield lock


@pytest.fixture
async def lock(redis_client: RedisClient) -> AsyncIterator[RedisLock]:
    async with RedisLock(redis_client) as lock:
        yield lock


async def test_fencing_token_is_the_servers_counter(lock: RedisLock, redis_client: RedisClient) -> None:
    p = redis_client.prefix
    lease = await lock.acquire("res", ttl=5)
    assert await redis_client.execute("GET", f"{p}:lock:res") == lease.token.encode()
    assert int(await redis_client.execute("GET", f"{p}:fence:res")) == lease.fencing_token
    await lease.release()
    assert await redis_client.execute("EXISTS", f"{p}:lock:res") == 0
    assert await redis_client.execute("EXISTS", f"{p}:fence:res") == 1  # never expires: tokens keep rising


async def test_fencing_tokens_increase_across_lock_instances(redis_url: str, unique_name: str) -> None:
    async with (
        RedisLock.connect(redis_url, prefix=unique_name) as a,
        RedisLock.connect(redis_url, prefix=unique_name) as b,
    ):
        tokens = []
        for lock in (a, b, a, b):
            lease = await lock.acquire("shared", ttl=5)
            tokens.append(lease.fencing_token)
            await lease.release()
        assert tokens == sorted(tokens) and len(set(tokens)) == 4


async def test_a_lease_is_per_object_not_per_task(lock: RedisLock) -> None:
    lease = await lock.acquire("k", ttl=5)

    async def other_task() -> None:  # another task may release it: the token travels with the lease
        await lease.release()

    await asyncio.create_task(other_task())
    again = await lock.acquire("k", ttl=5)
    assert again.token != lease.token
    with pytest.raises(LockNotOwnedError):
        await lease.release()
    await again.release()


async def test_hostile_keys_do_not_touch_each_others_fencing_counter(lock: RedisLock) -> None:
    plain = await lock.acquire("x", ttl=5)
    assert plain.fencing_token == 1
    for hostile in ("x:fence", "fence:x", "lock:x", ":x", "x:"):
        lease = await lock.acquire(hostile, ttl=5, wait=0)
        assert lease.fencing_token == 1, hostile
        await lease.release()
    with pytest.raises(LockNotAcquiredError):
        await lock.acquire("x", ttl=5)
    await plain.release()
    assert (await lock.acquire("x", ttl=5)).fencing_token == 2


async def test_auto_renewal_stops_on_release_and_on_aclose(redis_client: RedisClient) -> None:
    lock = RedisLock(redis_client)
    lease = await lock.acquire("r", ttl=0.3, auto_renew=True)
    assert len(lock._renewals) == 1
    await lease.release()
    await asyncio.sleep(0)
    assert not lock._renewals
    await lock.acquire("r2", ttl=0.3, auto_renew=True)
    await lock.aclose()
    assert not lock._renewals
    await asyncio.sleep(0.5)  # nobody renews it any more: it expires
    again = await RedisLock(redis_client).acquire("r2", ttl=5, wait=0)
    await again.release()


async def test_renewal_notices_a_lost_lease(lock: RedisLock, redis_client: RedisClient) -> None:
    lease = await lock.acquire("lost", ttl=0.3, auto_renew=True)
    await redis_client.execute("DEL", f"{redis_client.prefix}:lock:lost")  # someone broke it
    await asyncio.sleep(0.3)
    assert lease.lost
    with pytest.raises(LockNotOwnedError):
        await lease.release()


@pytest.mark.parametrize("ttl", [0, -1.0, float("nan")])
async def test_ttl_must_be_positive(lock: RedisLock, ttl: float) -> None:
    with pytest.raises(ConfigurationError):
        await lock.acquire("k", ttl=ttl)


async def test_negative_wait_is_rejected(lock: RedisLock) -> None:
    with pytest.raises(ConfigurationError):
        await lock.acquire("k", ttl=1, wait=-1)


async def test_wait_is_bounded_by_the_holders_ttl(lock: RedisLock) -> None:
    await lock.acquire("short", ttl=0.2)
    async with asyncio.timeout(2):
        lease = await lock.acquire("short", ttl=5, wait=1.5)
    await lease.release()
