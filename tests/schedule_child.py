"""A child process of ``test_scheduling.py``: an app that schedules one command, then exits.

Usage: ``python schedule_child.py URL SCHEDULE_ID DUE_AT``. The process starts ``App(scheduler=URL)``
(on PostgreSQL: a store on table ``schedules_<SCHEDULE_ID>``)
(no handler for the command), schedules ``Remind(SCHEDULE_ID)`` at the unix time ``DUE_AT`` with
that schedule id, prints one JSON line ``{"due_at": t, "message_id": n}`` and stops the app before the
due time: only another app can deliver it.
"""

from __future__ import annotations

import asyncio
import json
import sys

import msgspec

import catga
from catga.messages import Command, message_name
from catga.postgres import PostgresScheduleStore


@message_name("tests.Remind")
class Remind(msgspec.Struct, Command[None], frozen=True):
    """The scheduled command."""

    note: str


async def main(url: str, schedule_id: str, due_at: float) -> None:
    scheduler: str | PostgresScheduleStore = url
    if url.startswith("postgres"):  # a PostgreSQL URL names no table: the test's own
        scheduler = await PostgresScheduleStore.connect(url, table=f"schedules_{schedule_id}")
    async with catga.App(scheduler=scheduler, name="schedule-child") as app:
        sid = await app.schedule(Remind(schedule_id), at=due_at, id=schedule_id)
        stored = await app.schedules.get(sid)
        assert stored is not None
        report = {"due_at": stored.due_at, "message_id": int(stored.headers["Catga-Id"])}
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
