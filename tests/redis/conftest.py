"""Fixtures shared by the Redis tests: a client with a prefix unique to each test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from catga.redis import RedisClient


@pytest.fixture
async def redis_client(redis_url: str, unique_name: str) -> AsyncIterator[RedisClient]:
    """A :class:`RedisClient` whose prefix is unique to the test (closed after it)."""
    async with RedisClient.from_url(redis_url, prefix=unique_name) as client:
        yield client
