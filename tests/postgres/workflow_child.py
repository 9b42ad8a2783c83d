"""A runner process of ``test_workflow_kills.py``: workflows SIGKILLed by the test.

Usage: ``python workflow_child.py POSTGRES_URL NAME N [redis|nats URL]``: the workflows on
PostgreSQL, or on Redis / NATS at ``URL`` (the effects are PostgreSQL rows either way). It starts
workflows ``NAME-0`` ... ``NAME-<N-1>`` (idempotent: a restarted runner starts none twice), prints
``ready``, and runs workflows (its own and those whose runner died) until killed. Each step's
effect is a row keyed by the step's idempotency key (:func:`~catga.workflows.current_step_key`) in
``effects_NAME``; every execution of a step also counts in ``runs_NAME`` (a step cut short by a
kill runs again). With ``WF_SELF_KILL_BELOW=m`` in the environment, the runner SIGKILLs itself once
before and once after the effect of every step (compensations included) of workflows ``0`` ...
``m-1``, the first time any runner gets there (``kills_NAME`` remembers).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import asyncpg

import catga
from catga.nats import NatsConnection, NatsWorkflowStore
from catga.postgres import PostgresWorkflowStore
from catga.redis import RedisWorkflowStore
from catga.workflows import Workflow, WorkflowStore, current_step_key

SPREAD = 0.4 if os.environ.get("CATGA_CHAOS", "").lower() == "full" else 0.1


async def main(postgres_url: str, name: str, n: int, backend: str, url: str, self_kill: int) -> None:
    pool = await asyncpg.create_pool(postgres_url, min_size=2, max_size=8)
    store: WorkflowStore
    if backend == "redis":
        store = RedisWorkflowStore.connect(url, prefix=name)
    elif backend == "nats":
        store = NatsWorkflowStore(await NatsConnection.connect(url), bucket=name, storage="memory")
    else:
        store = PostgresWorkflowStore(pool, table=f"wf_{name}")
    app = catga.App(workflows=store)
    # a killed runner's workflows are taken over after about a second (a third when it kills itself)
    app.workflows.lease = 0.3 if self_kill else 1.0
    app.workflows.poll_interval = 0.1

    runs = f"runs_{name}"
    count = f"INSERT INTO {runs} (key, n) VALUES ($1, 1) ON CONFLICT (key) DO UPDATE SET n = {runs}.n + 1"

    kill_once = f"INSERT INTO kills_{name} (point) VALUES ($1) ON CONFLICT (point) DO NOTHING RETURNING 1"

    async def die_once(point: str) -> None:
        """SIGKILL this process the first time any runner reaches ``point``."""
        if await pool.fetchval(kill_once, point):
            os.kill(os.getpid(), signal.SIGKILL)

    async def effect(kind: str, k: int) -> int:
        key = current_step_key()
        if k < self_kill:
            await die_once(f"{key} before")  # the previous step is recorded, this one not begun
        await pool.execute(count, key)
        await asyncio.sleep(0.02)  # kills land mid-step too
        await pool.execute(
            f"INSERT INTO effects_{name} (key, kind) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING", key, kind
        )
        if k < self_kill:
            await die_once(f"{key} after")  # the effect is applied, the step not recorded
        return k

    async def undo(value: int) -> None:
        await effect("undo", value)

    async def fail(k: int) -> None:
        raise RuntimeError(f"order {k} cannot be shipped")

    @app.workflow
    async def order(wf: Workflow, k: int) -> int:
        a = await wf.step(effect, "reserve", k, compensate=undo)
        # workflows end over 3 s (12 s under `make chaos`, whose kills come every 0.3-1.2 s): kills find work
        await wf.sleep(SPREAD * (k % 30))
        b, c = await wf.all(
            wf.step(effect, "charge", k, compensate=undo),
            wf.step(effect, "notify", k),
        )
        if k % 4 == 0:
            await wf.step(fail, k)
        return a + b + c

    async with app:
        for k in range(n):
            await app.start_workflow(order, k, id=f"{name}-{k}")
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    backend, url = (sys.argv[4], sys.argv[5]) if len(sys.argv) > 5 else ("postgres", "")
    self_kill = int(os.environ.get("WF_SELF_KILL_BELOW", "0"))
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), backend, url, self_kill))
