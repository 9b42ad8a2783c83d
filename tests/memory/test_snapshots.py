"""The snapshot and checkpoint contracts on the in-memory reference stores."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from catga.eventsourcing import MemoryCheckpointStore, MemorySnapshotStore
from catga.testing.contracts import CheckpointStoreContract, SnapshotStoreContract


class TestMemorySnapshotStore(SnapshotStoreContract):
    @pytest.fixture
    async def snapshot_store(self) -> AsyncIterator[MemorySnapshotStore]:
        async with MemorySnapshotStore() as store:
            yield store


class TestMemoryCheckpointStore(CheckpointStoreContract):
    @pytest.fixture
    async def checkpoint_store(self) -> AsyncIterator[MemoryCheckpointStore]:
        async with MemoryCheckpointStore() as store:
            yield store
