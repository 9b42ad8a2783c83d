"""The DeadLetterQueue contract on Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from catga.protocols import DeadLetter
from catga.redis import RedisClient, RedisDeadLetterQueue
from catga.testing.contracts.dead_letter import DeadLetterQueueContract

pytestmark = pytest.mark.redis


class TestRedisDeadLetterQueue(DeadLetterQueueContract):
    @pytest.fixture
    async def dead_letter_queue(
        self, contract_redis_client: RedisClient
    ) -> AsyncIterator[RedisDeadLetterQueue]:
        async with RedisDeadLetterQueue(contract_redis_client) as queue:
            yield queue


async def test_ids_with_any_characters_are_stored_as_given(redis_client: RedisClient) -> None:
    dlq = RedisDeadLetterQueue(redis_client)
    ids = ["a b", "{tag}", "x:y", "é", "*"]
    for i in ids:
        await dlq.add(DeadLetter(id=i, source="s", type_name="", body=i.encode()))
    assert [letter.id for letter in await dlq.list()] == ids
    assert await dlq.count() == len(ids)
    assert await dlq.delete("{tag}")
    assert await dlq.get("{tag}") is None


async def test_list_of_many_letters(redis_client: RedisClient) -> None:
    dlq = RedisDeadLetterQueue(redis_client)
    for i in range(1200):
        await dlq.add(DeadLetter(id=f"m{i}", source="s", type_name="T", body=b"%d" % i))
    letters = await dlq.list(limit=5000)
    assert [letter.id for letter in letters] == [f"m{i}" for i in range(1200)]
