"""A child process of ``test_schema.py``'s race: first calls on fresh PostgreSQL tables, all at once.

Usage: ``python first_use_child.py URL PREFIX ROUNDS CALLS``. The process opens a pool of CALLS
connections, prints ``ready``, reads a start time (unix seconds) from stdin, and then in round ``r``
(at ``start + r * 0.4``) makes CALLS concurrent first calls, each through a new store object, on the
tables of round ``r`` (the other processes hit the same tables at the same moment). It prints one JSON
line: ``{"ok": n, "errors": ["TypeName: message", ...]}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import asyncpg

from catga.postgres import PostgresIdempotencyStore, PostgresInboxStore, PostgresOutboxStore
from catga.protocols import OutboxMessage

SPACING = 0.4


async def first_call(pool: Any, prefix: str, rnd: int, n: int) -> None:
    """Round ``rnd``, call ``n``: one first call on a fresh store object (kind by round)."""
    kind = rnd % 3
    if kind == 0:
        outbox = PostgresOutboxStore(pool, table=f"{prefix}_out{rnd}")
        message = OutboxMessage(id=f"{id(pool)}-{n}", destination="d", type_name="t", body=b"x")
        await outbox.add([message])
    elif kind == 1:
        await PostgresIdempotencyStore(pool, table=f"{prefix}_idem{rnd}").claim(f"k{id(pool)}-{n}")
    else:
        await PostgresInboxStore(pool, table=f"{prefix}_inbox{rnd}").complete(f"k{id(pool)}-{n}", b"r")


async def main(url: str, prefix: str, rounds: int, calls: int) -> None:
    pool = await asyncpg.create_pool(url, min_size=calls, max_size=calls)
    ok, errors = 0, []
    try:
        print("ready", flush=True)
        start = float(await asyncio.to_thread(sys.stdin.readline))
        for rnd in range(rounds):
            await asyncio.sleep(max(0.0, start + rnd * SPACING - time.time()))
            results = await asyncio.gather(
                *(first_call(pool, prefix, rnd, n) for n in range(calls)), return_exceptions=True
            )
            for r in results:
                if isinstance(r, BaseException):
                    errors.append(f"{type(r).__module__}.{type(r).__name__}: {r}")
                else:
                    ok += 1
    finally:
        await pool.close()
    print(json.dumps({"ok": ok, "errors": errors}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
