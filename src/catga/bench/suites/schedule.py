"""Scheduled messages: schedule-to-delivery time and throughput per backend, against a direct send.

Cases (one per schedule store: ``memory``, ``redis``, ``postgres``, ``nats``), each on an
:class:`~catga.App` with ``scheduler=`` that backend and one command handler:

* ``due_now_<backend>`` — impl ``catga``: ``app.schedule(cmd, after=0)`` and wait until the handler
  ran. The operation's time is the delivered-at minus due-at (*lateness*) of a message due the moment
  it is scheduled, store write included: the store write, the claim, the delivery through the
  pipeline, the completion. Impl ``direct-send``: ``app.send(cmd)`` on the same app, the floor (the
  ``catga/x`` ratio is scheduling's throughput as a fraction of a direct send's).
* ``due_in_50ms_<backend>`` — impl ``catga``: the same, due 50 ms after it is scheduled: the
  operation's time minus 50 ms is the lateness of a schedule that waited in the store (the wake-up of
  a waiting claim; on NATS the server's own timer).

Every case uses its own namespace (key prefix, table, stream) and removes nothing it did not create.
The PostgreSQL cases need ``postgres`` binaries (or ``$CATGA_POSTGRES_URL``).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import msgspec

from catga.bench.harness import BenchCase, BenchEnv, BenchError, Op
from catga.messages import Command, message_name

__all__ = ("SUITE", "BenchRemind", "cases")

SUITE = "schedule"


@message_name("bench.Remind")
class BenchRemind(msgspec.Struct, Command[None], frozen=True):
    """The scheduled command: ``n`` names the waiting operation."""

    n: int


async def _scheduler(env: BenchEnv, backend: str, name: str) -> Any:
    if backend == "memory":
        return None
    if backend == "redis":
        return f"{await env.redis_url()}?prefix={name}"
    if backend == "nats":
        return f"{await env.nats_url()}?prefix={name}"
    from catga.postgres import PostgresScheduleStore

    return await PostgresScheduleStore.connect(await env.postgres_url(), table=f"schedules_{name}")


def _factory(backend: str, delay: float | None) -> Callable[[BenchEnv], AbstractAsyncContextManager[Op]]:
    """``delay`` None: a direct send; else schedule ``after=delay`` and wait for the delivery."""

    @asynccontextmanager
    async def make(env: BenchEnv) -> AsyncIterator[Op]:
        import catga

        name = f"bench{uuid.uuid4().hex[:8]}"
        app = catga.App(scheduler=await _scheduler(env, backend, name), name=name)
        waiting: dict[int, asyncio.Future[None]] = {}
        counter = itertools.count()

        @app.handler
        async def remind(cmd: BenchRemind) -> None:
            fut = waiting.pop(cmd.n, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

        async def scheduled(worker: int) -> None:
            n = next(counter)
            fut = waiting[n] = asyncio.get_running_loop().create_future()
            await app.schedule(BenchRemind(n), after=delay)
            await asyncio.wait_for(fut, 30)

        async def direct(worker: int) -> None:
            (await app.send(BenchRemind(-1))).unwrap()

        async with app:
            op = direct if delay is None else scheduled
            try:
                async with asyncio.timeout(30):
                    await op(0)  # self-check: one delivery end to end
            except TimeoutError:
                raise BenchError(f"schedule self-check on {backend}: the message was not delivered") from None
            yield op

    return make


def cases(env: BenchEnv) -> list[BenchCase]:
    """The suite's cases (see the module docstring)."""
    out: list[BenchCase] = []
    for backend in ("memory", "redis", "postgres", "nats"):
        out += [
            BenchCase(
                f"due_now_{backend}", "catga", _factory(backend, 0.0),
                note=f"schedule(after=0) on {backend}, wait for the handler: lateness incl. the store write",
            ),
            BenchCase(
                f"due_now_{backend}", "direct-send", _factory(backend, None),
                note="app.send on the same app: the floor",
            ),
            BenchCase(
                f"due_in_50ms_{backend}", "catga", _factory(backend, 0.05),
                note=f"schedule(after=0.05) on {backend}: time minus 50 ms is the lateness",
            ),
        ]  # fmt: skip
    return out
