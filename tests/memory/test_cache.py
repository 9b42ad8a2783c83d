"""MemoryCache: the cache contract plus memory-only behaviour."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from catga.errors import ConfigurationError
from catga.memory import MemoryCache
from catga.testing.contracts import CacheContract


class TestMemoryCache(CacheContract):
    @pytest.fixture
    async def cache(self) -> AsyncIterator[MemoryCache]:
        async with MemoryCache() as cache:
            yield cache


@pytest.mark.parametrize("ttl", [0, -1.0, float("nan")])
async def test_a_non_positive_ttl_is_rejected(ttl: float) -> None:
    cache = MemoryCache()
    with pytest.raises(ConfigurationError):
        await cache.set("k", b"v", ttl=ttl)

    async def factory() -> bytes:
        raise AssertionError("not called: the ttl is checked first")

    with pytest.raises(ConfigurationError):
        await cache.get_or_set("k", factory, ttl=ttl)


async def test_values_must_be_bytes() -> None:
    cache = MemoryCache()
    with pytest.raises(ConfigurationError):
        await cache.set("k", "text")  # type: ignore[arg-type]
    await cache.set("k", bytearray(b"ab"))  # type: ignore[arg-type]
    assert await cache.get("k") == b"ab"


async def test_expired_entries_are_swept_on_writes() -> None:
    cache = MemoryCache(sweep_every=10)
    for i in range(10):
        await cache.set(f"old{i}", b"v", ttl=0.05)
    await asyncio.sleep(0.1)
    for i in range(10):
        await cache.set(f"new{i}", b"v")
    assert len(cache) == 10


def test_sweep_every_must_be_positive() -> None:
    with pytest.raises(ConfigurationError):
        MemoryCache(sweep_every=0)
