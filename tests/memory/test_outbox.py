"""MemoryOutboxStore: the outbox contract plus memory-only behaviour."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from catga.errors import ConfigurationError
from catga.memory import MemoryOutboxStore
from catga.protocols import OutboxMessage, OutboxStatus
from catga.testing.contracts import OutboxStoreContract


class TestMemoryOutboxStore(OutboxStoreContract):
    @pytest.fixture
    async def outbox_store(self) -> AsyncIterator[MemoryOutboxStore]:
        async with MemoryOutboxStore() as store:
            yield store


async def test_callers_never_share_state_with_the_store() -> None:
    store = MemoryOutboxStore()
    message = OutboxMessage(id="m1", destination="d", type_name="T", body=b"x", headers={"a": "1"})
    await store.add([message])
    message.headers["a"] = "changed"
    message.status = OutboxStatus.DEAD
    fetched = (await store.fetch_pending())[0]
    fetched.headers["b"] = "2"
    got = await store.get("m1")
    assert got is not None
    assert (got.headers, got.status) == ({"a": "1"}, OutboxStatus.PENDING)


async def test_add_rejects_a_bad_batch_whole() -> None:
    store = MemoryOutboxStore()
    good = OutboxMessage(id="ok", destination="d", type_name="T", body=b"x", created_at=time.time())
    bad = OutboxMessage(id="", destination="d", type_name="T", body=b"x")
    with pytest.raises(ConfigurationError):
        await store.add([good, bad])
    assert await store.get("ok") is None
    assert await store.fetch_pending(limit=0) == []
