"""Durable workflows: a three-step workflow started and completed end to end, catga against DBOS.

Case ``three_steps_<backend>``: one operation starts a workflow of three steps (each a no-op
``async def`` returning its input plus one, so the figures are the workflow machinery, not the
steps) and waits until it has completed, every step recorded in the store before the next runs.

Implementations:

* ``catga`` on ``memory``, ``postgres``, ``redis`` and ``nats``: ``app.start_workflow(...)`` then
  ``app.wait_workflow(id)`` on an :class:`~catga.App` whose workflow store is that backend (a fresh
  table, prefix or bucket per run).
* ``dbos`` (``three_steps_postgres`` only): DBOS Transact in its recommended setup, a system database
  on the same PostgreSQL server (a fresh database per run), ``@DBOS.workflow()`` / ``@DBOS.step()``
  on the same no-op steps, ``await DBOS.start_workflow_async(wf, n)`` then ``await handle.get_result()``.
* ``dbos-direct`` (same case): ``await wf(n)``, DBOS's other way to run a workflow, in the caller's
  task (durable all the same): its faster path, measured too so the comparison is not against
  DBOS's slower one only.

DBOS is process-global: each run launches it (``DBOS(config=...)``, ``DBOS.launch()``) and
destroys it at the end (``DBOS.destroy(destroy_registry=False)``). Both get a connection pool of
``max_concurrency + 4``. The server the harness starts runs with ``fsync=off`` and
``synchronous_commit=off`` for both. Needs ``pip install 'catga[bench]'`` (it brings ``dbos``) and
``postgres`` binaries (or ``$CATGA_POSTGRES_URL``) for the PostgreSQL case.

Example::

    catga bench workflow --concurrency 1,16
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from catga.bench.harness import BenchCase, BenchEnv, BenchError, Op

__all__ = ("SUITE", "cases")

SUITE = "workflow"
BACKENDS = ("memory", "postgres", "redis", "nats")


async def _step(n: int) -> int:
    return n + 1


def _catga(backend: str) -> Callable[[BenchEnv], AbstractAsyncContextManager[Op]]:
    @asynccontextmanager
    async def make(env: BenchEnv) -> AsyncIterator[Op]:
        import catga
        from catga.workflows import COMPLETED, Workflow

        name = f"bench{uuid.uuid4().hex[:8]}"
        store: Any = None
        if backend == "postgres":
            from catga.postgres import PostgresWorkflowStore

            size = env.max_concurrency + 4
            store = await PostgresWorkflowStore.connect(
                await env.postgres_url(), table=f"wf_{name}", min_size=size, max_size=size
            )
        elif backend == "redis":
            store = f"{await env.redis_url()}?prefix={name}"
        elif backend == "nats":
            store = f"{await env.nats_url()}?prefix={name}"
        app = catga.App(workflows=store, name=name)

        async def step_one(n: int) -> int:
            return await _step(n)

        async def step_two(n: int) -> int:
            return await _step(n)

        async def step_three(n: int) -> int:
            return await _step(n)

        async def three_steps(wf: Workflow, n: int) -> int:
            a = await wf.step(step_one, n, name="one")
            b = await wf.step(step_two, a, name="two")
            return await wf.step(step_three, b, name="three")

        app.workflows.register(three_steps, name="three_steps")
        counter = itertools.count()

        async def op(worker: int) -> None:
            n = next(counter)
            wid = await app.start_workflow("three_steps", n, id=f"{name}-{n}")
            state = await app.wait_workflow(wid)
            if state.status != COMPLETED or app.workflows.result(state) != n + 3:
                raise BenchError(f"workflow {wid} on {backend} ended {state.status}: {state.error}")

        async with app:
            try:
                await op(0)  # self-check: one workflow end to end
                yield op
            finally:
                if backend == "postgres":
                    async with store.pool.acquire() as conn:
                        await conn.execute(f"DROP TABLE IF EXISTS {store.table}_history, {store.table}")

    return make


_DBOS_WORKFLOWS: dict[str, Any] = {}


def _dbos_workflows() -> dict[str, Any]:
    """The DBOS workflows (``async`` and plain ``def``), registered once per process (DBOS keeps a
    global registry)."""
    if not _DBOS_WORKFLOWS:
        from dbos import DBOS

        @DBOS.step(name="catga_bench_one")
        async def one(n: int) -> int:
            return await _step(n)

        @DBOS.step(name="catga_bench_two")
        async def two(n: int) -> int:
            return await _step(n)

        @DBOS.step(name="catga_bench_three")
        async def three(n: int) -> int:
            return await _step(n)

        @DBOS.workflow(name="catga_bench_three_steps")
        async def three_steps(n: int) -> int:
            return await three(await two(await one(n)))

        @DBOS.step(name="catga_bench_sync_one")
        def sync_one(n: int) -> int:
            return n + 1

        @DBOS.step(name="catga_bench_sync_two")
        def sync_two(n: int) -> int:
            return n + 1

        @DBOS.step(name="catga_bench_sync_three")
        def sync_three(n: int) -> int:
            return n + 1

        @DBOS.workflow(name="catga_bench_sync_three_steps")
        def sync_three_steps(n: int) -> int:
            return sync_three(sync_two(sync_one(n)))

        _DBOS_WORKFLOWS.update(async_=three_steps, sync=sync_three_steps)
    return _DBOS_WORKFLOWS


_DBOS_USERS: list[
    object
] = []  # the cases using the launched DBOS (the harness sets a case's impls up together)


@asynccontextmanager
async def _dbos_launched(env: BenchEnv) -> AsyncIterator[Any]:
    """DBOS launched on a fresh system database of the harness's PostgreSQL; yields the ``DBOS`` class.

    DBOS is one instance per process and the harness sets up every implementation of a case before
    measuring them, so the first user launches it and the last one destroys it.
    """
    try:
        from dbos import DBOS
    except ImportError as exc:
        raise BenchError("the dbos peer needs `pip install 'catga[bench]'` (dbos)") from exc
    import asyncpg

    url = await env.postgres_url()
    database = f"dbos_bench_{uuid.uuid4().hex[:8]}"
    loop = asyncio.get_running_loop()
    me = object()
    first = not _DBOS_USERS
    _DBOS_USERS.append(me)
    try:
        if first:
            _dbos_workflows()
            DBOS(
                config={
                    "name": "catga_bench",
                    "system_database_url": urlunsplit(urlsplit(url)._replace(path=f"/{database}")),
                    "sys_db_pool_size": env.max_concurrency + 4,
                    "log_level": "WARNING",
                }
            )
            DBOS.launch()
        yield DBOS
    finally:
        _DBOS_USERS.remove(me)
        if first:
            # The first user's database; the last user out destroys DBOS.
            _DBOS_DATABASES.append(database)
        if not _DBOS_USERS:
            DBOS.destroy(destroy_registry=False)
            # DBOS made its executor the loop's default one and shut it down: give the loop a new one.
            loop.set_default_executor(ThreadPoolExecutor())
            conn = await asyncpg.connect(url, timeout=30)
            try:
                while _DBOS_DATABASES:
                    name = _DBOS_DATABASES.pop()
                    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', timeout=60)
            finally:
                await conn.close()


_DBOS_DATABASES: list[str] = []


def _dbos(how: str) -> Callable[[BenchEnv], AbstractAsyncContextManager[Any]]:
    """``how``: ``start`` (start_workflow_async + get_result), ``call`` (await it), ``threads``."""

    @asynccontextmanager
    async def make(env: BenchEnv) -> AsyncIterator[Any]:
        counter = itertools.count()
        async with _dbos_launched(env) as dbos:
            workflows = _dbos_workflows()
            wf, sync_wf = workflows["async_"], workflows["sync"]

            async def started(worker: int) -> None:
                n = next(counter)
                handle = await dbos.start_workflow_async(wf, n)
                if await handle.get_result() != n + 3:
                    raise BenchError("the DBOS workflow returned a wrong result")

            async def called(worker: int) -> None:
                n = next(counter)
                if await wf(n) != n + 3:
                    raise BenchError("the DBOS workflow returned a wrong result")

            def in_thread(worker: int) -> None:
                n = next(counter)
                if sync_wf(n) != n + 3:
                    raise BenchError("the DBOS workflow returned a wrong result")

            if how == "threads":
                await asyncio.to_thread(in_thread, 0)  # self-check
                yield in_thread
            else:
                op = started if how == "start" else called
                await op(0)  # self-check
                yield op

    return make


def cases(env: BenchEnv) -> list[BenchCase]:
    """The suite's cases (see the module docstring)."""
    out = [
        BenchCase(
            f"three_steps_{backend}", "catga", _catga(backend),
            note=f"start_workflow + wait_workflow, 3 no-op steps recorded on {backend}",
        )
        for backend in BACKENDS
    ]  # fmt: skip
    out += [
        BenchCase(
            "three_steps_postgres", "dbos", _dbos("start"),
            note="DBOS.start_workflow_async + get_result, 3 no-op async steps, system DB on the same server",
        ),
        BenchCase(
            "three_steps_postgres", "dbos-direct", _dbos("call"),
            note="await the async @DBOS.workflow function in the caller's task",
        ),
        BenchCase(
            "three_steps_postgres", "dbos-threads", _dbos("threads"), mode="threads",
            note="call the plain-def @DBOS.workflow function from OS threads (DBOS's usual sync style)",
        ),
    ]  # fmt: skip
    return out
