"""A child process of ``test_worker_id.py``: one App whose only remote backends are PostgreSQL.

Usage: ``python worker_id_child.py URL``. The process starts ``App(outbox=URL,
idempotency_store=URL)`` (memory transport), prints one JSON line ``{"worker_id": n, "leased": n or
null, "ids": [...]}`` while the app runs, then waits for a line on stdin before stopping the app, so
that the parent sees several processes running at once.
"""

from __future__ import annotations

import asyncio
import json
import sys

import catga
from catga._worker_ids import process_worker_id
from catga.ids import default_generator


async def main(url: str) -> None:
    async with catga.App(outbox=url, idempotency_store=url, name="pg-worker-id") as app:
        ids = [default_generator().next_id() for _ in range(3)]
        report = {"worker_id": app.worker_id, "leased": process_worker_id().worker_id, "ids": ids}
        print(json.dumps(report), flush=True)
        await asyncio.to_thread(sys.stdin.readline)
    print(json.dumps({"after": process_worker_id().worker_id}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
