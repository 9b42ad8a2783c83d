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
* ``dbos-threads`` (same case): the plain-``def`` workflow and steps called from OS threads
  (``mode="threads"``), DBOS's usual synchronous style.

Phases (P50/P95/P99 and mean per phase, see :mod:`catga.bench.phases`), timed the same way for
catga and DBOS: ``perf_counter_ns()`` read by the caller and, inside the workflow function, right
before and after each awaited step call, handed from the workflow body to the caller through a dict
keyed by the workflow's input (about 2.5 µs of bookkeeping per workflow on the reference VM). The
phases tile the operation: their means add up to its mean (their percentiles do not add up).

* ``create`` (``catga`` and ``dbos``): the operation begins → the start call returns. catga:
  ``store.create`` (the instance record, one write) and a run task scheduled, not yet running.
  DBOS: ``_init_workflow`` in a worker thread (the status row, one write, naming this process
  as the workflow's executor) and a task created.
* ``start``: the start call returned → the workflow function begins its first step call. catga:
  the run task gets the loop, takes the lease (``store.acquire``, a fencing token), reads the
  instance and its history and marks it running (four round trips on a server store), while the
  caller's ``wait_workflow`` makes its first status read. DBOS: the task gets the loop and enters
  the function (no round trip: DBOS needs no lease, ``create`` named the executor).
  ``dbos-direct`` and ``dbos-threads`` have no start call: their ``start`` runs from the call of
  the workflow function, so it also holds what ``create`` is for the others. Compare ``create`` +
  ``start`` across implementations, not ``start`` alone.
* ``step 1``, ``step 2``, ``step 3``: one awaited step call each, the step's run plus its durable
  record. catga's ``wf.step``: a read of the instance for a cancel request (until one is seen),
  the step, a fenced write of its result to the history. DBOS's ``@DBOS.step``: a read for an
  already recorded result (replay check), the step, a write of its output, both database calls in
  a worker thread (``asyncio.to_thread``) for async steps, in the calling thread for plain ones.
* ``finish``: the last step's record returned → the caller has the result. catga: the function
  returns, the engine writes ``completed`` with the result, releases the lease, the run task ends,
  the caller's ``wait_workflow`` wakes and reads the status. ``dbos``: DBOS writes ``SUCCESS`` with
  the output, the task ends, ``get_result`` returns (after a no-op ``record_get_result`` in a
  worker thread). ``dbos-direct`` / ``dbos-threads``: DBOS writes ``SUCCESS``, the call returns.

At concurrency above 1 every phase also holds the time spent waiting for the event loop (or the
GIL) while other workflows run; the phases that hand over between tasks (``start`` and ``finish``
for ``catga`` and ``dbos``) take most of that queueing, since the loop runs every other ready task
in between.

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
from time import perf_counter_ns
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from catga.bench.harness import BenchCase, BenchEnv, BenchError
from catga.bench.phases import Phased, Phases

__all__ = ("SUITE", "cases")

SUITE = "workflow"
BACKENDS = ("memory", "postgres", "redis", "nats")

#: Phases of an operation that starts the workflow with a start call and waits for its result.
STARTED_PHASES = ("create", "start", "step 1", "step 2", "step 3", "finish")
#: Phases of an operation that runs the workflow function in the caller (no start call to return).
CALLED_PHASES = STARTED_PHASES[1:]


async def _step(n: int) -> int:
    return n + 1


def _catga(backend: str) -> Callable[[BenchEnv], AbstractAsyncContextManager[Phased]]:
    @asynccontextmanager
    async def make(env: BenchEnv) -> AsyncIterator[Phased]:
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

        # Timestamps of the workflows under way, by input: the operation opens the list, the
        # workflow body (in the engine's task) adds to it, the operation turns it into phases.
        marks: dict[int, list[int]] = {}

        async def three_steps(wf: Workflow, n: int) -> int:
            mark = marks[n].append
            mark(perf_counter_ns())
            a = await wf.step(step_one, n, name="one")
            mark(perf_counter_ns())
            b = await wf.step(step_two, a, name="two")
            mark(perf_counter_ns())
            c = await wf.step(step_three, b, name="three")
            mark(perf_counter_ns())
            return c

        app.workflows.register(three_steps, name="three_steps")
        counter = itertools.count()
        phases = Phases(STARTED_PHASES)
        record = phases.marks_recorder(STARTED_PHASES)

        async def op(worker: int) -> None:
            n = next(counter)
            marks[n] = times = [perf_counter_ns()]
            try:
                wid = await app.start_workflow("three_steps", n, id=f"{name}-{n}")
                times.append(perf_counter_ns())
                state = await app.wait_workflow(wid)
                times.append(perf_counter_ns())
            finally:
                del marks[n]
            if state.status != COMPLETED or app.workflows.result(state) != n + 3:
                raise BenchError(f"workflow {wid} on {backend} ended {state.status}: {state.error}")
            record(times)

        async with app:
            try:
                await op(0)  # self-check: one workflow end to end
                yield Phased(op, phases)
            finally:
                if backend == "postgres":
                    async with store.pool.acquire() as conn:
                        await conn.execute(f"DROP TABLE IF EXISTS {store.table}_history, {store.table}")

    return make


_DBOS_WORKFLOWS: dict[str, Any] = {}
# Timestamps of the DBOS workflows under way, by input, as for catga. The workflows are registered
# once per process and shared by the three DBOS implementations, so the inputs come from one counter.
_DBOS_MARKS: dict[int, list[int]] = {}
_DBOS_COUNTER = itertools.count()


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
            mark = _DBOS_MARKS[n].append
            mark(perf_counter_ns())
            a = await one(n)
            mark(perf_counter_ns())
            b = await two(a)
            mark(perf_counter_ns())
            c = await three(b)
            mark(perf_counter_ns())
            return c

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
            mark = _DBOS_MARKS[n].append
            mark(perf_counter_ns())
            a = sync_one(n)
            mark(perf_counter_ns())
            b = sync_two(a)
            mark(perf_counter_ns())
            c = sync_three(b)
            mark(perf_counter_ns())
            return c

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


def _dbos(how: str) -> Callable[[BenchEnv], AbstractAsyncContextManager[Phased]]:
    """``how``: ``start`` (start_workflow_async + get_result), ``call`` (await it), ``threads``."""

    @asynccontextmanager
    async def make(env: BenchEnv) -> AsyncIterator[Phased]:
        async with _dbos_launched(env) as dbos:
            workflows = _dbos_workflows()
            wf, sync_wf = workflows["async_"], workflows["sync"]
            names = STARTED_PHASES if how == "start" else CALLED_PHASES
            phases = Phases(names)
            record = phases.marks_recorder(names)

            def check(n: int, result: object, times: list[int]) -> None:
                if result != n + 3:
                    raise BenchError(f"the DBOS workflow returned {result!r} for {n}, not {n + 3}")
                record(times)

            async def started(worker: int) -> None:
                n = next(_DBOS_COUNTER)
                _DBOS_MARKS[n] = times = [perf_counter_ns()]
                try:
                    handle = await dbos.start_workflow_async(wf, n)
                    times.append(perf_counter_ns())
                    result = await handle.get_result()
                    times.append(perf_counter_ns())
                finally:
                    del _DBOS_MARKS[n]
                check(n, result, times)

            async def called(worker: int) -> None:
                n = next(_DBOS_COUNTER)
                _DBOS_MARKS[n] = times = [perf_counter_ns()]
                try:
                    result = await wf(n)
                    times.append(perf_counter_ns())
                finally:
                    del _DBOS_MARKS[n]
                check(n, result, times)

            def in_thread(worker: int) -> None:
                n = next(_DBOS_COUNTER)
                _DBOS_MARKS[n] = times = [perf_counter_ns()]
                try:
                    result = sync_wf(n)
                    times.append(perf_counter_ns())
                finally:
                    del _DBOS_MARKS[n]
                check(n, result, times)

            if how == "threads":
                await asyncio.to_thread(in_thread, 0)  # self-check
                yield Phased(in_thread, phases)
            else:
                op = started if how == "start" else called
                await op(0)  # self-check
                yield Phased(op, phases)

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
