"""Two projection processes, one owner: SIGKILL the owner mid-batch, the other takes over.

The read model and the checkpoint commit in one PostgreSQL transaction, and checkpoint writes carry the
owner's fencing token, so after the takeover no event is missing from the model and none is in it twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from catga.redis import RedisEventStore
from catga.serialization import TypeRegistry
from chaos import Chaos
from projection_worker import Tick

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.chaos, pytest.mark.slow]

TESTS = Path(__file__).resolve().parents[1]
WAIT = 90.0  # generous: a loaded machine; not a performance bound


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env


async def _until(what: str, check: Any) -> None:
    deadline = time.monotonic() + WAIT
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT} s: {what}")
        await asyncio.sleep(0.05)


@pytest.mark.timeout(240)
async def test_the_standby_takes_over_a_killed_owner_with_no_event_skipped_or_applied_twice(
    redis_url: str, postgres_url: str, pool: Any, unique_name: str, tmp_path: Path, chaos: Chaos
) -> None:
    before, after = chaos.size(short=400, full=4_000), chaos.size(short=100, full=1_000)
    table = unique_name
    await pool.execute(f"CREATE TABLE model_{table} (position bigint NOT NULL, pid integer NOT NULL)")
    store = RedisEventStore.connect(redis_url, prefix=unique_name, registry=TypeRegistry(types=[Tick]))
    mark = tmp_path / "mark"
    procs: list[asyncio.subprocess.Process] = []

    async def spawn() -> asyncio.subprocess.Process:
        args = (redis_url, unique_name, postgres_url, table, str(mark_at), str(mark))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "projection_worker", *args,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=str(TESTS),
        )  # fmt: skip
        procs.append(proc)
        return proc

    async def checkpoint() -> int:
        return int(await pool.fetchval(f"SELECT position FROM ckpt_{table} WHERE name = 'takeover'") or 0)

    mark_at = before * 3 // 4 - 5  # inside a batch of 50: events before it are handled, not committed
    try:
        for n in range(before):
            await store.append(f"t-{n % 7}", [Tick(n)])
        first = await spawn()
        await _until("the first process owns the projection", lambda: _exists(pool, f"ckpt_{table}"))
        second = await spawn()
        await _until("the owner reached the mark", lambda: _true(mark.exists() and mark.read_text() != ""))
        # Normally the first process; under heavy load its lease may have lapsed and the second owns it.
        victim, survivor = (first, second) if int(mark.read_text()) == first.pid else (second, first)
        assert int(mark.read_text()) == victim.pid
        killed_at = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
        for n in range(before, before + after):  # appended while the survivor takes over and goes live
            await store.append(f"t-{n % 7}", [Tick(n)])
        last = await store.last_position()
        await _until("the survivor caught up", lambda: _equals(checkpoint(), last))
        recovery = time.monotonic() - killed_at
        rows = await pool.fetch(f"SELECT position, pid FROM model_{table}")
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.communicate()
        await store.aclose()
    positions = sorted(r["position"] for r in rows)
    expected = [e.position for e in await _all(redis_url, unique_name)]
    missing = len(set(expected) - set(positions))
    twice = len(positions) - len(set(positions))
    chaos.record(
        "projection owner SIGKILLed mid-batch, standby takes over (PostgreSQL model)",
        messages=len(expected),
        kills=1,
        lost=missing,
        twice=twice,
        recovery_s=round(recovery, 2),
    )
    assert positions == expected  # every event once: none skipped, none applied twice
    by_victim = {r["position"] for r in rows if r["pid"] == victim.pid}
    assert mark_at not in by_victim  # killed with the mark's batch in hand, uncommitted
    assert {r["pid"] for r in rows if r["position"] >= mark_at} == {survivor.pid}


async def _all(redis_url: str, prefix: str) -> list[Any]:
    async with RedisEventStore.connect(
        redis_url, prefix=prefix, registry=TypeRegistry(types=[Tick])
    ) as store:
        return await store.read_all()


async def _exists(pool: Any, table: str) -> bool:
    return bool(await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", table))


async def _true(value: bool) -> bool:
    return value


async def _equals(value: Any, expected: int) -> bool:
    return bool(await value == expected)
