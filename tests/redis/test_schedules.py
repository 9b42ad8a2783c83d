"""The ScheduleStore contract on Redis (a single server, a cluster, Sentinel) and its key layout."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from catga.redis import RedisClient, RedisScheduleStore
from catga.testing.contracts import ScheduleStoreContract

pytestmark = pytest.mark.redis


class TestRedisScheduleStore(ScheduleStoreContract):
    @pytest.fixture
    async def schedule_stores(
        self, contract_redis_url: str, unique_name: str
    ) -> AsyncIterator[tuple[RedisScheduleStore, RedisScheduleStore]]:
        async with (
            RedisScheduleStore.connect(contract_redis_url, prefix=unique_name) as a,
            RedisScheduleStore.connect(contract_redis_url, prefix=unique_name) as b,
        ):
            yield a, b


async def test_keys_follow_the_documented_layout(redis_client: RedisClient) -> None:
    from catga.protocols import EVENT, Schedule

    store = RedisScheduleStore(redis_client)
    await store.add(Schedule(id="a.b", due_at=0.0, kind=EVENT, type_name="T", body=b"x"))
    p = redis_client.prefix
    keys = sorted(k.decode() for k in await redis_client.execute("KEYS", f"{p}:*"))
    assert keys == [f"{p}:sc-due", f"{p}:sc:a.b"]
