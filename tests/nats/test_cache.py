"""The cache contract on a NATS KV-layout bucket, plus NATS-only behaviour."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from catga.errors import BackendUnavailableError
from catga.nats import NatsCache, NatsConnection
from catga.testing.contracts import CacheContract

pytestmark = pytest.mark.nats


@pytest.fixture
async def cache(
    nats_connection: NatsConnection, unique_name: str, doomed_streams: list[str]
) -> AsyncIterator[NatsCache]:
    doomed_streams.append(f"KV_{unique_name}")
    async with NatsCache(nats_connection, bucket=unique_name, storage="memory") as cache:
        yield cache


class TestNatsCache(CacheContract):
    pass


async def test_values_are_stored_raw_for_plain_clients(
    cache: NatsCache, nats_connection: NatsConnection
) -> None:
    await cache.set("page:1", b"<html>")
    raw = await nats_connection.js.get_last_msg(f"KV_{cache.bucket}", f"$KV.{cache.bucket}.page=3A1")
    assert raw.data == b"<html>"


async def test_concurrent_get_or_set_calls_the_factory_once(cache: NatsCache) -> None:
    calls = 0

    async def factory() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return b"v"

    results = await asyncio.gather(*(cache.get_or_set("k", factory) for _ in range(10)))
    assert results == [b"v"] * 10
    assert calls == 1


async def test_a_bucket_deleted_behind_its_back_is_created_again(
    cache: NatsCache, nats_connection: NatsConnection
) -> None:
    await cache.set("k", b"v")
    await nats_connection.js.delete_stream(f"KV_{cache.bucket}")
    with pytest.raises(BackendUnavailableError, match="no responders"):
        await cache.get("k")
    assert await cache.get("k") is None  # the next call created the bucket again
    await cache.set("k", b"w")
    assert await cache.get("k") == b"w"
