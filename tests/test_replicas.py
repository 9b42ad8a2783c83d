"""Replicas: several processes, several apps each, started at one moment on one broker (SPEC §10).

Every app with a NATS or Redis backend leases the process's Snowflake worker id through it, so the
message ids of different processes never collide: no event is dropped by JetStream's ``Nats-Msg-Id``
de-duplication, and no two events share an id (which an inbox would also drop).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import catga
from catga._worker_ids import process_worker_id
from catga.ids import default_generator
from catga.memory import MemoryLock
from chaos import Chaos
from replica_worker import ReplicaEvent

pytestmark = pytest.mark.slow

PROCESSES = 4
APPS = 2
DELIVERY_WAIT = 150.0  # seconds before the test gives up on missing events (not a performance bound)
TESTS = Path(__file__).parent


@pytest.fixture(
    params=[pytest.param("nats", marks=pytest.mark.nats), pytest.param("redis", marks=pytest.mark.redis)]
)
def broker_url(request: pytest.FixtureRequest, unique_name: str) -> str:
    if request.param == "nats":
        return f"{request.getfixturevalue('nats_url')}?prefix={unique_name}&storage=memory"
    return f"{request.getfixturevalue('redis_url')}?prefix={unique_name}"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CATGA_WORKER_ID"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.chaos
@pytest.mark.timeout(400)
async def test_processes_started_together_lose_no_event_and_share_no_id(
    broker_url: str, chaos: Chaos
) -> None:
    events = chaos.size(short=2_500, full=10_000)  # per app (the issue asks for 10,000: make chaos)
    collector = catga.App(transport=broker_url, name="collector")
    ids_of: dict[tuple[int, int, int], set[int]] = {}

    @collector.handler
    async def collect(event: ReplicaEvent, ctx: catga.Context) -> None:
        ids_of.setdefault((event.process, event.app, event.seq), set()).add(ctx.message_id)

    collector.consume(ReplicaEvent, max_in_flight=256)
    total = PROCESSES * APPS * events
    async with collector:
        start_at = time.time() + 3.0
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "replica_worker",
                broker_url,
                str(p),
                str(APPS),
                str(events),
                str(start_at),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=_env(),
                cwd=str(TESTS),
            )
            for p in range(PROCESSES)
        ]
        outputs = [await proc.communicate() for proc in procs]
        for proc, (_, err) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, err.decode()[-3000:]
        reports = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]
        assert [r["failures"] for r in reports] == [[]] * PROCESSES
        worker_ids = [r["worker_id"] for r in reports]

        deadline = time.monotonic() + DELIVERY_WAIT
        while len(ids_of) < total and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a count
            await asyncio.sleep(0.1)
    missing = total - len(ids_of)
    twice = sum(len(ids) - 1 for ids in ids_of.values())
    backend = broker_url.split(":", 1)[0]
    chaos.record(
        f"{PROCESSES} processes x {APPS} apps start together ({backend})",
        messages=total,
        lost=missing,
        twice=twice,
    )
    assert missing == 0, f"{missing} of {total} events never arrived (dropped as duplicates?)"
    all_ids = [i for ids in ids_of.values() for i in ids]
    assert all(len(ids) == 1 for ids in ids_of.values()), "an event arrived under two ids"
    assert len(set(all_ids)) == total, f"{total - len(set(all_ids))} ids shared by different events"
    assert len(set(worker_ids)) == PROCESSES, f"processes shared worker ids: {worker_ids}"


# -- the process lease, in one process ---------------------------------------------------------------


async def test_apps_of_one_process_share_one_lease_and_hand_it_over() -> None:
    lock_a, lock_b = MemoryLock(), MemoryLock()
    a = catga.App(name="a", worker_id=lock_a)
    b = catga.App(name="b", worker_id=lock_b)
    async with a:
        leased = a.worker_id
        assert process_worker_id().worker_id == leased
        async with b:
            assert b.worker_id == leased  # joined, not leased twice
            before = default_generator().next_id()
        # b left: a still holds the lease
        assert process_worker_id().worker_id == leased
    assert process_worker_id().worker_id is None
    assert default_generator().next_id() > before

    async with a, b:
        first = process_worker_id().owner
        assert first is not None
        owner_app, other_app = (a, b) if first.name.startswith("a ") else (b, a)
        await owner_app.aclose()  # the owner stops: the id is leased again through the other app
        assert process_worker_id().worker_id is not None
        assert process_worker_id().owner is not None and process_worker_id().owner is not first
        other_app.worker_id  # noqa: B018 - readable while running
        default_generator().next_id()
    assert process_worker_id().worker_id is None


async def test_an_explicit_worker_id_wins_and_a_memory_app_leases_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with catga.App():
        assert process_worker_id().worker_id is None
    async with catga.App(worker_id=7) as app:
        assert app.worker_id == 7 and process_worker_id().worker_id is None
    monkeypatch.setenv("CATGA_WORKER_ID", "9")
    async with catga.App(worker_id=MemoryLock()):  # a lock given explicitly still leases
        assert process_worker_id().worker_id is not None
    with pytest.raises(catga.errors.ConfigurationError, match="worker_id"):
        catga.App(worker_id=1 << 20)
    with pytest.raises(catga.errors.ConfigurationError, match="worker_id"):
        catga.App(worker_id="3")  # type: ignore[arg-type]
    default_generator()._adopt(0, None)


async def test_a_url_app_leases_through_its_backend(broker_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CATGA_WORKER_ID", raising=False)
    async with catga.App(transport=broker_url) as app:
        leased = process_worker_id().worker_id
        assert leased is not None and app.worker_id == leased
        health = await app.health()
        [check] = [c for c in health.checks if c.name == "worker_id"]
        assert check.ok and f"worker id {leased} leased" in check.detail
    assert process_worker_id().worker_id is None
    monkeypatch.setenv("CATGA_WORKER_ID", "5")
    async with catga.App(transport=broker_url):
        assert process_worker_id().worker_id is None  # the deployment hands out ids
    default_generator()._adopt(0, None)


async def test_a_lost_worker_id_is_refused_then_leased_again() -> None:
    """After a lease is lost (say the lock's Redis restarted empty and another process took the id),
    the process never draws from the doubtful id, then leases a new one by itself and draws again."""
    lock = MemoryLock()
    leases = process_worker_id()
    member = await leases.join("t", lock, ttl=0.3)
    try:
        lost, old = leases.lease, leases.worker_id
        assert lost is not None and old is not None
        time.sleep(0.45)  # noqa: ASYNC251 - block the loop: no renewal runs, the lease expires
        thief = await lock.acquire(f"worker-id.catga.{old}", ttl=30.0)  # another process takes the id
        deadline = time.monotonic() + 5.0
        while leases.lease is lost or leases.lease is None or not leases.lease.valid:
            assert time.monotonic() < deadline, "no new worker id was leased"
            await asyncio.sleep(0.02)
        assert lost.lost_reason is not None
        assert leases.worker_id != old and default_generator().worker_id == leases.worker_id
        default_generator().next_id()  # ids are drawn again
        await thief.release()
    finally:
        await leases.leave(member)
    assert leases.worker_id is None
