"""The OutboxStore contract on Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from catga.redis import RedisClient, RedisOutboxStore
from catga.testing.contracts.outbox import OutboxStoreContract

pytestmark = pytest.mark.redis


class TestRedisOutboxStore(OutboxStoreContract):
    @pytest.fixture
    async def outbox_store(self, contract_redis_client: RedisClient) -> AsyncIterator[RedisOutboxStore]:
        async with RedisOutboxStore(contract_redis_client) as store:
            yield store
