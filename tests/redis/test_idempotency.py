"""The IdempotencyStore contract on Redis (the inbox is the same class)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from catga.redis import RedisClient, RedisIdempotencyStore, RedisInboxStore
from catga.testing.contracts.idempotency import IdempotencyStoreContract

pytestmark = pytest.mark.redis


class TestRedisIdempotencyStore(IdempotencyStoreContract):
    @pytest.fixture
    async def idempotency_store(
        self, contract_redis_client: RedisClient
    ) -> AsyncIterator[RedisIdempotencyStore]:
        async with RedisIdempotencyStore(contract_redis_client) as store:
            yield store


def test_inbox_is_the_idempotency_store() -> None:
    assert RedisInboxStore is RedisIdempotencyStore
