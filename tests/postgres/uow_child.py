"""A child process of ``test_unit_of_work.py``: one command handled in a PostgreSQL unit of work, killed
with SIGKILL between two of its writes.

Usage: ``python uow_child.py URL NAME MESSAGE_ID CRASH_AT``. The app's handler of ``PlaceOrder``
appends an event, publishes it (an outbox row, the event being exported), and writes a state row on
the unit of work's connection; the idempotency store claims the message id before and completes it
after. ``CRASH_AT`` names the write after which the process kills itself (``claim``, ``append``,
``publish``, ``state``, ``complete``; ``none`` to finish). It prints one JSON line: how many times the
handler ran, and the Result.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

import asyncpg
import msgspec

import catga
from catga.memory import MemoryTransport
from catga.messages import Command, Event, Metadata, message_name
from catga.postgres import (
    PostgresEventStore,
    PostgresIdempotencyStore,
    PostgresOutboxStore,
    PostgresUnitOfWork,
    current_connection,
)
from catga.protocols import NO_STREAM, Claim
from catga.serialization import TypeRegistry

CRASH_AT = ""


def crash(point: str) -> None:
    if point == CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)


@message_name("uow.PlaceOrder")
class PlaceOrder(msgspec.Struct, Command[int], frozen=True):
    order_id: str
    total: int


@message_name("uow.OrderPlaced")
class OrderPlaced(msgspec.Struct, Event, frozen=True):
    order_id: str
    total: int


class CrashingIdempotencyStore(PostgresIdempotencyStore):
    async def claim(self, key: str, lock_ttl: float = 30.0, *, connection: Any = None) -> Claim:
        claim = await super().claim(key, lock_ttl, connection=connection)
        crash("claim")
        return claim

    async def complete(
        self, key: str, result: bytes = b"", ttl: float = 86400.0, *, connection: Any = None
    ) -> None:
        await super().complete(key, result, ttl, connection=connection)
        crash("complete")


async def main(url: str, name: str, message_id: int) -> None:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    registry = TypeRegistry(types=[PlaceOrder, OrderPlaced])
    store = PostgresEventStore(pool, table=f"ev_{name}", registry=registry)
    app = catga.App(
        MemoryTransport(registry=registry),
        store=store,
        outbox=PostgresOutboxStore(pool, table=f"ob_{name}"),
        idempotency_store=CrashingIdempotencyStore(pool, table=f"idem_{name}"),
        registry=registry,
        unit_of_work=PostgresUnitOfWork(pool),
    )
    app.export(OrderPlaced)
    ran: list[str] = []

    @app.handler
    async def place(cmd: PlaceOrder, ctx: catga.Context) -> int:
        ran.append(cmd.order_id)
        version = await store.append(cmd.order_id, [OrderPlaced(cmd.order_id, cmd.total)], NO_STREAM)
        crash("append")
        (await ctx.publish(OrderPlaced(cmd.order_id, cmd.total))).unwrap()
        crash("publish")
        await current_connection().execute(
            f"INSERT INTO state_{name} (order_id, n) VALUES ($1, 1)", cmd.order_id
        )
        crash("state")
        return version

    async with app:
        result = await app.send(PlaceOrder("o-1", 42), metadata=Metadata(message_id=message_id))
    await pool.close()
    print(
        json.dumps({"ran": len(ran), "ok": result.ok, "value": result.value, "error": result.error}),
        flush=True,
    )


if __name__ == "__main__":
    url, name, mid, CRASH_AT = sys.argv[1:5]
    asyncio.run(main(url, name, int(mid)))
