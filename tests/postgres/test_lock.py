"""The DistributedLock and worker-id lease contracts on PostgreSQL, plus PostgreSQL-only checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from catga.errors import ConfigurationError, LockNotAcquiredError, LockNotOwnedError
from catga.postgres import PostgresLock
from catga.testing.contracts import DistributedLockContract, WorkerIdLeaseContract

pytestmark = pytest.mark.postgres


@pytest.fixture
async def distributed_lock(pool: Any, unique_name: str) -> AsyncIterator[PostgresLock]:
    async with PostgresLock(pool, table=f"locks_{unique_name}") as lock:
        yield lock


class TestPostgresLock(DistributedLockContract, WorkerIdLeaseContract):
    pass


async def test_the_row_keeps_the_fencing_counter_after_release(
    distributed_lock: PostgresLock, pool: Any
) -> None:
    table = distributed_lock.table
    lease = await distributed_lock.acquire("res", ttl=5)
    row = await pool.fetchrow(f"SELECT token, fencing, expires_at FROM {table} WHERE key = 'res'")
    assert row["token"] == lease.token and row["fencing"] == lease.fencing_token == 1
    await lease.release()
    row = await pool.fetchrow(f"SELECT token, fencing, expires_at FROM {table} WHERE key = 'res'")
    assert row["token"] is None and row["expires_at"] is None and row["fencing"] == 1
    assert (await distributed_lock.acquire("res", ttl=5)).fencing_token == 2


async def test_two_lock_objects_on_two_pools_exclude_each_other(
    distributed_lock: PostgresLock, postgres_url: str
) -> None:
    table = distributed_lock.table
    async with await PostgresLock.connect(postgres_url, table=table, min_size=1, max_size=2) as other:
        lease = await distributed_lock.acquire("k", ttl=5.0)
        with pytest.raises(LockNotAcquiredError):
            await other.acquire("k", ttl=5.0)
        await lease.release()
        taken = await other.acquire("k", ttl=5.0)
        assert taken.fencing_token > lease.fencing_token
        with pytest.raises(LockNotAcquiredError):
            await distributed_lock.acquire("k", ttl=5.0)
        await taken.release()


async def test_expiry_is_judged_by_the_servers_clock(distributed_lock: PostgresLock, pool: Any) -> None:
    lease = await distributed_lock.acquire("k", ttl=60.0)
    # The server says the lease ran out (as if its clock moved on): another holder may take the key,
    # whatever the clients' clocks say.
    await pool.execute(
        f"UPDATE {distributed_lock.table} SET expires_at = now() - interval '1 second' WHERE key = 'k'"
    )
    taken = await distributed_lock.acquire("k", ttl=5.0, wait=0)
    with pytest.raises(LockNotOwnedError):
        await lease.extend(5.0)
    await taken.release()


async def test_auto_renewal_stops_on_release_and_on_aclose(pool: Any, unique_name: str) -> None:
    lock = PostgresLock(pool, table=f"locks_{unique_name}")
    lease = await lock.acquire("r", ttl=0.3, auto_renew=True)
    assert len(lock._renewals) == 1
    await lease.release()
    await asyncio.sleep(0)
    assert not lock._renewals
    await lock.acquire("r2", ttl=0.3, auto_renew=True)
    await lock.aclose()
    assert not lock._renewals
    await asyncio.sleep(0.5)  # nobody renews it any more: it expires
    again = await PostgresLock(pool, table=lock.table).acquire("r2", ttl=5, wait=0)
    await again.release()


async def test_renewal_notices_a_lost_lease(distributed_lock: PostgresLock, pool: Any) -> None:
    lease = await distributed_lock.acquire("lost", ttl=0.3, auto_renew=True)
    await pool.execute(f"UPDATE {distributed_lock.table} SET token = 'someone else' WHERE key = 'lost'")
    async with asyncio.timeout(5):
        while not lease.lost:  # noqa: ASYNC110 - polling for the renewal (every ttl / 3)
            await asyncio.sleep(0.02)
    with pytest.raises(LockNotOwnedError):
        await lease.release()


@pytest.mark.parametrize("ttl", [0, -1.0, float("nan"), float("inf")])
async def test_ttl_must_be_a_positive_number_of_seconds(distributed_lock: PostgresLock, ttl: float) -> None:
    with pytest.raises(ConfigurationError, match="ttl"):
        await distributed_lock.acquire("k", ttl=ttl)
    lease = await distributed_lock.acquire("k", ttl=5.0)
    with pytest.raises(ConfigurationError, match="ttl"):
        await lease.extend(ttl)
    await lease.release()


async def test_negative_wait_is_rejected(distributed_lock: PostgresLock) -> None:
    with pytest.raises(ConfigurationError, match="wait"):
        await distributed_lock.acquire("k", ttl=1, wait=-1)


async def test_a_waiter_takes_the_key_once_the_holders_ttl_runs_out(distributed_lock: PostgresLock) -> None:
    held = await distributed_lock.acquire("short", ttl=0.2)
    async with asyncio.timeout(5):
        lease = await distributed_lock.acquire("short", ttl=5, wait=3.0)
    assert lease.fencing_token == held.fencing_token + 1
    await lease.release()
