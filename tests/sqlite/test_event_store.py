"""The EventStore contract on SQLite, plus two processes appending to one file."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from catga.sqlite import SqliteEventStore
from catga.testing.contracts.event_store import EventStoreContract
from catga.testing.contracts.messages import ContractOrderPlaced, contract_registry


class TestSqliteEventStore(EventStoreContract):
    @pytest.fixture
    async def event_store(self, tmp_path: Path) -> AsyncIterator[SqliteEventStore]:
        async with SqliteEventStore(
            tmp_path / "events.db", registry=contract_registry(), poll_interval=0.05
        ) as s:
            yield s


async def test_an_in_memory_database_works_too() -> None:
    async with SqliteEventStore(":memory:", registry=contract_registry()) as store:
        assert await store.append("o", [ContractOrderPlaced("o", 1)]) == 0
        assert [e.position for e in await store.read_all()] == [1]


_WRITER = """
import asyncio, sys
from catga.sqlite import SqliteEventStore
from catga.testing.contracts.messages import ContractOrderPlaced, contract_registry

async def main(path, who):
    async with SqliteEventStore(path, registry=contract_registry()) as store:
        for i in range(100):
            await store.append(f"{who}-{i % 5}", [ContractOrderPlaced(who, i)])

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_processes_sharing_a_file_get_one_gapless_commit_order(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with SqliteEventStore(path, registry=contract_registry(), poll_interval=0.02) as store:
        it = store.subscribe_all()
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", _WRITER, str(path), who, stderr=subprocess.PIPE
            )
            for who in ("a", "b")
        ]
        async with asyncio.timeout(60):
            errors = [(await p.communicate())[1] for p in procs]
            assert [p.returncode for p in procs] == [0, 0], errors
            seen = [await anext(it) for _ in range(200)]
        await it.aclose()  # type: ignore[attr-defined]
        assert [e.position for e in seen] == list(range(1, 201))
        assert seen == await store.read_all()
        for who in ("a", "b"):
            assert [e.data.total for e in seen if e.data.order_id == who] == list(range(100))
