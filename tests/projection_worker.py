"""A projection replica for the takeover test: one ProjectionRunner competing for its lease.

Run as ``python -m projection_worker REDIS_URL PREFIX POSTGRES_URL TABLE MARK_AT MARK_FILE``. Events come
from a Redis event store; the read model (table ``model_<TABLE>``) and the checkpoint (table
``ckpt_<TABLE>``) commit in one PostgreSQL transaction; the lease is a Redis lock (ttl 1 s). The first
process to handle the event at position ``MARK_AT`` writes its pid to ``MARK_FILE`` and then hangs in
the middle of its batch, so the test can SIGKILL it there.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from catga import Event
from catga.eventsourcing import Projection, ProjectionRunner, SaveCheckpoint, handles
from catga.messages import message_name
from catga.postgres import PostgresCheckpointStore
from catga.protocols import StoredEvent
from catga.redis import RedisEventStore, RedisLock
from catga.serialization import TypeRegistry


@message_name("projection_worker.Tick")
@dataclass(frozen=True)
class Tick(Event):
    n: int


class Model(Projection):
    def __init__(self, pool: Any, table: str, mark_at: int, mark_file: Path) -> None:
        self.pool = pool
        self.table = table
        self.mark_at = mark_at
        self.mark_file = mark_file
        self.pending: list[tuple[int, int]] = []

    @handles(Tick)
    async def _tick(self, event: Tick, stored: StoredEvent) -> None:
        if stored.position == self.mark_at:
            try:
                fd = os.open(self.mark_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                await asyncio.sleep(3600)  # mid-batch, handled but uncommitted events in hand: kill me
        self.pending.append((stored.position, os.getpid()))

    async def commit(self, position: int, save: SaveCheckpoint) -> None:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.executemany(
                    f"INSERT INTO model_{self.table} (position, pid) VALUES ($1, $2)", self.pending
                )
                await save(connection=conn)
        finally:
            self.pending.clear()

    async def discard(self) -> None:
        self.pending.clear()


async def main(redis_url: str, prefix: str, pg_url: str, table: str, mark_at: int, mark_file: str) -> None:
    pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=2)
    store = RedisEventStore.connect(redis_url, prefix=prefix, registry=TypeRegistry(types=[Tick]))
    lock = RedisLock.connect(redis_url, prefix=prefix)
    checkpoints = PostgresCheckpointStore(pool, table=f"ckpt_{table}")
    model = Model(pool, table, mark_at, Path(mark_file))
    runner = ProjectionRunner(store, model, checkpoints, "takeover", lock=lock, lease_ttl=1.0, batch_size=50)
    print("ready", flush=True)
    await runner.run()  # until killed


if __name__ == "__main__":
    redis_url, prefix, pg_url, table, mark_at, mark_file = sys.argv[1:7]
    asyncio.run(main(redis_url, prefix, pg_url, table, int(mark_at), mark_file))
