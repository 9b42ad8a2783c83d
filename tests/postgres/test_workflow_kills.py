"""Workflows on PostgreSQL, Redis or NATS whose runner is SIGKILLed again and again: another runner
finishes every one, each step's (idempotency-keyed) effect is applied once, and compensations run
once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from catga.nats import NatsConnection, NatsWorkflowStore
from catga.postgres import PostgresWorkflowStore
from catga.redis import RedisWorkflowStore
from catga.workflows import COMPENSATED, COMPLETED, FINISHED, WorkflowStore
from chaos import Chaos

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

HERE = Path(__file__).parent
WAIT = 240.0  # seconds the whole run may take before the test gives up (not a performance bound)


async def _start(
    postgres_url: str, name: str, n: int, backend: tuple[str, str]
) -> asyncio.subprocess.Process:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "workflow_child.py"), postgres_url, name, str(n),
        *backend,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        line = await proc.stdout.readline()
    if line.strip() != b"ready":
        proc.kill()
        _, err = await proc.communicate()
        raise AssertionError(f"runner did not start: {line!r} {err.decode()[-3000:]}")
    return proc


def _expected(name: str, k: int) -> dict[str, str]:
    """Effect key -> kind of workflow k: reserve (seq 0), sleep (1), charge (2), notify (3); those with
    k % 4 == 0 fail at seq 4 and undo charge (5), then reserve (6)."""
    wid = f"{name}-{k}"
    keys = {f"{wid}:0": "reserve", f"{wid}:2": "charge", f"{wid}:3": "notify"}
    if k % 4 == 0:
        keys |= {f"{wid}:5": "undo", f"{wid}:6": "undo"}
    return keys


async def _open_store(
    backend: str, url: str, name: str, pool: Any
) -> tuple[WorkflowStore, NatsConnection | None]:
    """The test's view of the runners' workflow store (and its NATS connection, if any)."""
    if backend == "redis":
        return RedisWorkflowStore.connect(url, prefix=name), None
    if backend == "nats":
        nats = await NatsConnection.connect(url)
        return NatsWorkflowStore(nats, bucket=name, storage="memory"), nats
    return PostgresWorkflowStore(pool, table=f"wf_{name}"), None


async def _close_store(store: WorkflowStore, nats: NatsConnection | None, name: str) -> None:
    await store.aclose()
    if nats is not None:
        with contextlib.suppress(Exception):
            await nats.js.delete_stream(f"KV_{name}")
        await nats.aclose()


@pytest.fixture(
    params=[
        "postgres",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("nats", marks=pytest.mark.nats),
    ]
)
def workflow_backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """Where the workflows are: (backend, its URL; "" for the PostgreSQL of the effects)."""
    if request.param == "postgres":
        return "postgres", ""
    return request.param, request.getfixturevalue(f"{request.param}_url")


@pytest.mark.chaos
@pytest.mark.timeout(400)
async def test_killed_runners_hand_every_workflow_over(
    postgres_url: str, pool: Any, unique_name: str, chaos: Chaos, workflow_backend: tuple[str, str]
) -> None:
    n = chaos.size(short=24, full=300)
    name = unique_name
    backend, url = workflow_backend
    await pool.execute(f"CREATE TABLE effects_{name} (key text PRIMARY KEY, kind text NOT NULL)")
    await pool.execute(f"CREATE TABLE runs_{name} (key text PRIMARY KEY, n int NOT NULL)")
    rng = random.Random(13)
    kills = 0
    started = time.monotonic()
    store, nats = await _open_store(backend, url, name, pool)

    async def finished() -> int:
        return sum(i.status in FINISHED for i in await store.list_instances(limit=n))

    async with asyncio.timeout(WAIT):
        proc = await _start(postgres_url, name, n, workflow_backend)
        while True:
            await asyncio.sleep(rng.uniform(0.3, 1.2) if chaos.full else rng.uniform(0.05, 0.4))
            done = await finished()
            proc.kill()  # SIGKILL, whatever it is doing: between steps, inside one, compensating
            await proc.wait()
            kills += done < n
            proc = await _start(postgres_url, name, n, workflow_backend)
            if done == n:
                break
        proc.kill()
        await proc.wait()
    instances = await store.list_instances(limit=n)
    await _close_store(store, nats, name)
    effects = {r["key"]: r["kind"] for r in await pool.fetch(f"SELECT key, kind FROM effects_{name}")}
    reruns = await pool.fetchval(f"SELECT coalesce(sum(n - 1), 0) FROM runs_{name}")
    expected: dict[str, str] = {}
    for k in range(n):
        expected |= _expected(name, k)
    chaos.record(
        f"workflows on {backend}, runner SIGKILLed repeatedly",
        messages=n,
        kills=kills,
        lost=len(set(expected) - set(effects)),
        twice=len(set(effects) - set(expected)),
        recovery_s=round(time.monotonic() - started, 1),
    )
    by_id = {i.id: i for i in instances}
    assert len(by_id) == n
    for k in range(n):
        state = by_id[f"{name}-{k}"]
        if k % 4 == 0:
            assert state.status == COMPENSATED, (k, state.status, state.error)
            assert f"order {k} cannot be shipped" in state.error
        else:
            assert (state.status, state.result) == (COMPLETED, str(3 * k).encode()), state.error
    assert effects == expected  # every effect and compensation once, none at another sequence number
    assert kills >= 1, "no runner was killed mid-run: the run proves nothing (make n larger)"
    print(f"{kills} kills, {reruns} step executions repeated after a kill")


@pytest.mark.chaos
@pytest.mark.timeout(400)
async def test_a_runner_killed_at_every_step_boundary_and_inside_every_step(
    postgres_url: str, pool: Any, unique_name: str, chaos: Chaos, workflow_backend: tuple[str, str]
) -> None:
    """Deterministic kill points: the runner SIGKILLs itself before and after the effect of every
    step and compensation of the first workflows; each time a new runner takes over."""
    n, doomed = chaos.size(short=3, full=12), chaos.size(short=1, full=4)
    name = unique_name
    await pool.execute(f"CREATE TABLE effects_{name} (key text PRIMARY KEY, kind text NOT NULL)")
    await pool.execute(f"CREATE TABLE runs_{name} (key text PRIMARY KEY, n int NOT NULL)")
    await pool.execute(f"CREATE TABLE kills_{name} (point text PRIMARY KEY)")
    backend, url = workflow_backend
    store, nats = await _open_store(backend, url, name, pool)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env["WF_SELF_KILL_BELOW"] = str(doomed)
    started = time.monotonic()
    deaths = 0

    async def finished() -> int:
        return sum(i.status in FINISHED for i in await store.list_instances(limit=n))

    async with asyncio.timeout(WAIT):
        while True:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(HERE / "workflow_child.py"), postgres_url, name, str(n),
                *workflow_backend,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
            )  # fmt: skip
            while proc.returncode is None and await finished() < n:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.1)
            if proc.returncode is None:  # every workflow is finished
                proc.kill()
                await proc.wait()
                break
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode()
            assert proc.returncode == -signal.SIGKILL, (
                f"the runner exited with {proc.returncode}: {err[-3000:]}"
            )
            deaths += 1
    points = {r["point"] for r in await pool.fetch(f"SELECT point FROM kills_{name}")}
    effects = {r["key"]: r["kind"] for r in await pool.fetch(f"SELECT key, kind FROM effects_{name}")}
    expected: dict[str, str] = {}
    for k in range(n):
        expected |= _expected(name, k)
    doomed_keys = {key for key in expected if int(key.split(":")[0].rsplit("-", 1)[1]) < doomed}
    chaos.record(
        f"workflows on {backend}, runner SIGKILLed before and after every step's effect",
        messages=n,
        kills=deaths,
        lost=len(set(expected) - set(effects)),
        twice=len(set(effects) - set(expected)),
        recovery_s=round(time.monotonic() - started, 1),
    )
    assert points == {f"{key} {when}" for key in doomed_keys for when in ("before", "after")}
    # steps running together (wf.all, other workflows) may each reach a kill point before it dies
    assert 1 <= deaths <= len(points)
    assert effects == expected
    by_id = {i.id: i for i in await store.list_instances(limit=n)}
    await _close_store(store, nats, name)
    for k in range(n):
        state = by_id[f"{name}-{k}"]
        assert state.status == (COMPENSATED if k % 4 == 0 else COMPLETED), (k, state.status, state.error)
