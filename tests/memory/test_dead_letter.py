"""MemoryDeadLetterQueue: the dead-letter contract plus memory-only behaviour."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from catga.errors import ConfigurationError
from catga.memory import MemoryDeadLetterQueue
from catga.protocols import DeadLetter
from catga.testing.contracts import DeadLetterQueueContract


class TestMemoryDeadLetterQueue(DeadLetterQueueContract):
    @pytest.fixture
    async def dead_letter_queue(self) -> AsyncIterator[MemoryDeadLetterQueue]:
        async with MemoryDeadLetterQueue() as dlq:
            yield dlq


async def test_letters_are_copied_in_and_out() -> None:
    dlq = MemoryDeadLetterQueue()
    letter = DeadLetter(id="d1", source="s", type_name="T", body=b"x", headers={"a": "1"})
    await dlq.add(letter)
    letter.headers["a"] = "changed"
    got = await dlq.get("d1")
    assert got is not None and got.headers == {"a": "1"}
    got.headers["b"] = "2"
    again = await dlq.get("d1")
    assert again is not None and again.headers == {"a": "1"}


async def test_a_letter_without_id_is_rejected() -> None:
    dlq = MemoryDeadLetterQueue()
    with pytest.raises(ConfigurationError):
        await dlq.add(DeadLetter(id="", source="s", type_name="T", body=b""))
    assert await dlq.count() == 0
