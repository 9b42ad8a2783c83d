"""A producer process for the multi-process tests: N apps start at one moment and publish events.

Run as ``python -m replica_worker URL PROCESS APPS COUNT START_AT``: the process sleeps until the
wall-clock time ``START_AT``, starts ``APPS`` apps on ``URL`` at once, each publishing ``COUNT``
:class:`ReplicaEvent` s through the transport, then prints one JSON line (worker ids, failures).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass

import catga
from catga import Event
from catga.messages import message_name


@message_name("replica_worker.ReplicaEvent")
@dataclass(frozen=True)
class ReplicaEvent(Event):
    process: int
    app: int
    seq: int


async def _produce(app: catga.App, process: int, index: int, count: int, failures: list[str]) -> None:
    next_seq = iter(range(count))

    async def lane() -> None:
        for seq in next_seq:
            result = await app.publish(ReplicaEvent(process, index, seq))
            if not result.ok:
                failures.append(f"{process}/{index}/{seq}: {result.error}")

    await asyncio.gather(*(lane() for _ in range(32)))


async def main(url: str, process: int, apps: int, count: int, start_at: float) -> None:
    members = [catga.App(transport=url, name=f"producer-{process}-{a}") for a in range(apps)]
    for app in members:
        app.export(ReplicaEvent)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    failures: list[str] = []
    await asyncio.gather(*(app.start() for app in members))
    worker_id = members[0].worker_id
    try:
        await asyncio.gather(*(_produce(app, process, i, count, failures) for i, app in enumerate(members)))
    finally:
        for app in members:
            await app.aclose()
    print(json.dumps({"process": process, "worker_id": worker_id, "failures": failures[:20]}), flush=True)


if __name__ == "__main__":
    url, process, apps, count, start_at = sys.argv[1:6]
    asyncio.run(main(url, int(process), int(apps), int(count), float(start_at)))
