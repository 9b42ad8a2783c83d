"""The Cache contract on Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from catga.redis import RedisCache, RedisClient
from catga.testing.contracts.cache import CacheContract

pytestmark = pytest.mark.redis


class TestRedisCache(CacheContract):
    @pytest.fixture
    async def cache(self, contract_redis_client: RedisClient) -> AsyncIterator[RedisCache]:
        async with RedisCache(contract_redis_client) as cache:
            yield cache


async def test_values_live_under_the_prefix_with_a_server_side_ttl(redis_client: RedisClient) -> None:
    cache = RedisCache(redis_client)
    await cache.set("user:1", b"v", ttl=30)
    key = f"{redis_client.prefix}:cache:user:1"
    assert await redis_client.execute("GET", key) == b"v"
    assert 0 < await redis_client.execute("PTTL", key) <= 30_000
    await cache.set("user:1", b"w")
    assert await redis_client.execute("PTTL", key) == -1
