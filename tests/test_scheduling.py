"""Scheduled messages through the app: due time, pipeline delivery, cancel, retries, replicas, restarts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

import catga
from catga.errors import ConfigurationError, HandlerError, InvalidIdentifierError
from catga.memory import MemoryDeadLetterQueue, MemoryScheduleStore
from catga.messages import Command, Event, message_name
from catga.postgres import PostgresScheduleStore
from catga.protocols import EVENT, Schedule, ScheduleStore
from catga.scheduling import Scheduler, due_time, next_due, occurrence_id
from catga.testing.contracts._util import eventually
from schedule_child import Remind

CHILD = Path(__file__).with_name("schedule_child.py")


@message_name("tests.Ping")
class Ping(msgspec.Struct, Command[None], frozen=True):
    n: int


@message_name("tests.Pinged")
class Pinged(msgspec.Struct, Event, frozen=True):
    n: int


def _recorder(app: catga.App) -> list[tuple[str, int, float, int]]:
    """Register handlers for Ping and Pinged; return the list of (kind, n, at, message id) they record."""
    got: list[tuple[str, int, float, int]] = []

    @app.handler
    async def ping(cmd: Ping, ctx: catga.Context) -> None:
        got.append(("cmd", cmd.n, time.time(), ctx.message_id))

    @app.handler
    async def pinged(evt: Pinged, ctx: catga.Context) -> None:
        got.append(("evt", evt.n, time.time(), ctx.message_id))

    return got


def _until(cond: Callable[[], bool], what: str) -> object:
    async def check() -> bool:
        return cond()

    return eventually(check, what=what)


async def test_commands_and_events_are_delivered_at_their_due_time_never_before() -> None:
    app = catga.App()
    got = _recorder(app)
    async with app:
        t0 = time.time()
        await app.schedule(Ping(1), after=0.3)  # due t0 + 0.3 or later
        await app.schedule(Pinged(2), at=datetime.fromtimestamp(t0 + 0.15, UTC))
        await app.schedule(Ping(3), at=t0 + 0.05)
        await _until(lambda: len(got) == 3, "three deliveries")
    due = {("cmd", 1): t0 + 0.3, ("evt", 2): t0 + 0.15, ("cmd", 3): t0 + 0.05}
    assert {(k, n) for k, n, _, _ in got} == set(due)
    for kind, n, at, _ in got:
        assert at >= due[kind, n], f"message {n} delivered {due[kind, n] - at:.4f} s early"


async def test_cancel_stops_a_delivery_and_says_whether_there_was_one() -> None:
    app = catga.App()
    got = _recorder(app)
    async with app:
        t0 = time.time()
        sid = await app.schedule(Ping(1), at=t0 + 1.0)  # due first: delivered first unless cancelled
        await app.schedule(Ping(2), at=t0 + 1.1)
        assert await app.cancel_schedule(sid) is True
        assert await app.cancel_schedule(sid) is False
        await _until(lambda: len(got) == 1, "the other delivery")
        assert await app.schedules.get(sid) is None
    assert [n for _, n, _, _ in got] == [2]


async def test_a_delivery_keeps_the_metadata_of_when_it_was_scheduled() -> None:
    app = catga.App()
    got = _recorder(app)
    seen: list[int | None] = []

    @app.handler
    async def chain(evt: Pinged, ctx: catga.Context) -> None:
        seen.append(ctx.correlation_id)

    async with app:
        sid = await app.schedule(Pinged(1), after=0)
        stored = await app.schedules.get(sid)
        assert stored is not None and stored.kind == EVENT
        await _until(lambda: len(got) == 1 and len(seen) == 1, "the delivery")
    assert got[0][3] == int(stored.headers["Catga-Id"])
    assert seen == [got[0][3]]  # a root message: its own correlation


async def test_a_chosen_id_is_scheduled_once() -> None:
    app = catga.App()
    got = _recorder(app)
    async with app:
        t0 = time.time()
        assert await app.schedule(Ping(1), at=t0 + 0.5, id="remind-1") == "remind-1"
        assert await app.schedule(Ping(2), at=t0 + 0.5, id="remind-1") == "remind-1"
        stored = await app.schedules.get("remind-1")
        assert stored is not None and msgspec.json.decode(stored.body, type=Ping) == Ping(1)
        await _until(lambda: len(got) == 1, "the delivery")
        await _until_gone(app, "remind-1")
    assert [n for _, n, _, _ in got] == [1]


async def test_a_recurring_schedule_runs_until_cancelled_with_an_id_per_occurrence() -> None:
    app = catga.App()
    got = _recorder(app)
    async with app:
        t0 = time.time()
        sid = await app.schedule(Pinged(7), after=0.05, every=0.05)
        await _until(lambda: len(got) >= 3, "three occurrences")
        assert await app.cancel_schedule(sid) is True
        count = len(got)
    assert len({mid for _, _, _, mid in got}) == len(got)
    for i, (_, _, at, _) in enumerate(got[:3]):
        assert at >= t0 + 0.05 * (i + 1) - 1e-6
    assert len(got) <= count + 1  # an occurrence claimed before the cancel may still arrive once


async def test_a_failing_handler_is_retried_and_a_business_refusal_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = catga.App()
    calls: list[int] = []

    @app.handler
    async def ping(cmd: Ping) -> None:
        calls.append(cmd.n)
        if cmd.n == 1 and calls.count(1) == 1:
            raise RuntimeError("flaky")
        if cmd.n == 2:
            raise HandlerError("no, thanks")

    async with app:
        await app.schedule(Ping(1), after=0)
        await app.schedule(Ping(2), after=0)
        await _until(lambda: calls.count(1) == 2, "the retry")
        await _until(lambda: len(app.schedules) == 0, "both settled")  # type: ignore[arg-type]
    assert calls.count(2) == 1
    assert "refused" in caplog.text


async def test_bad_arguments_are_refused() -> None:
    app = catga.App()
    with pytest.raises(ConfigurationError, match="running app"):
        await app.schedule(Ping(1), after=1)
    async with app:
        with pytest.raises(ConfigurationError, match="exactly one"):
            await app.schedule(Ping(1))
        with pytest.raises(ConfigurationError, match="exactly one"):
            await app.schedule(Ping(1), after=1, at=time.time())
        with pytest.raises(ConfigurationError, match="naive"):
            await app.schedule(Ping(1), at=datetime(2030, 1, 1))
        with pytest.raises(ConfigurationError, match=">= 0"):
            await app.schedule(Ping(1), after=-1)
        with pytest.raises(ConfigurationError, match="at least 1 ms"):
            await app.schedule(Ping(1), after=1, every=0)
        with pytest.raises(ConfigurationError, match="command, query or event"):
            await app.schedule("hello", after=1)
        with pytest.raises(InvalidIdentifierError):
            await app.schedule(Ping(1), after=1, id="not ok")


def test_due_times_and_next_occurrences() -> None:
    assert due_time(None, 2.5, 100.0) == 102.5
    assert (
        due_time(datetime(2030, 1, 1, tzinfo=UTC), None, 0.0) == datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    )
    s = Schedule(id="r", due_at=100.0, kind=EVENT, type_name="T", body=b"", every=10.0)
    assert next_due(s, 100.5) == 110.0
    assert next_due(s, 135.0) == 140.0  # missed occurrences are skipped, not caught up
    assert next_due(msgspec.structs.replace(s, every=0.0), 100.5) is None
    assert occurrence_id(s) == occurrence_id(msgspec.structs.replace(s, attempts=3))
    assert occurrence_id(s) != occurrence_id(msgspec.structs.replace(s, due_at=110.0))


async def test_an_occurrence_failing_max_attempts_times_is_dead_lettered() -> None:
    store, dlq = MemoryScheduleStore(), MemoryDeadLetterQueue()
    attempts: list[float] = []

    async def deliver(schedule: Schedule) -> None:
        attempts.append(time.time())
        raise RuntimeError("always")

    scheduler = Scheduler(store, deliver, dead_letters=dlq, max_attempts=3, retry_backoff=0.01)
    await store.add(
        Schedule(id="d", due_at=0.0, kind=EVENT, type_name="T", body=b"x", headers={"Catga-Id": "5"})
    )
    async with scheduler:
        await _until(lambda: scheduler.dead == 1, "the dead letter")
    assert len(attempts) == 3 and await store.get("d") is None
    (letter,) = await dlq.list()
    assert (letter.type_name, letter.kind, letter.attempts, letter.message_id) == ("T", EVENT, 3, "5")
    assert "always" in letter.error


async def test_the_scheduler_never_delivers_before_its_own_clock_says_so() -> None:
    now = [1000.0]
    store = MemoryScheduleStore(clock=lambda: now[0] + 5)  # the store's clock runs 5 s ahead
    delivered: list[float] = []

    async def deliver(schedule: Schedule) -> None:
        delivered.append(now[0])

    scheduler = Scheduler(store, deliver, clock=lambda: now[0])
    await store.add(Schedule(id="e", due_at=1003.0, kind=EVENT, type_name="T", body=b"x"))
    assert await scheduler.run_once() == 1  # claimed by the store's clock...
    assert delivered == []  # ...but not delivered
    now[0] = 1003.0
    assert await scheduler.run_once() == 1
    assert delivered == [1003.0]


# -- replicas, transports, restarts ----------------------------------------------------------------


@pytest.fixture(
    params=[
        pytest.param("nats", marks=pytest.mark.nats),
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-cluster", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def scheduler_url(request: pytest.FixtureRequest, unique_name: str) -> str:
    """A scheduler URL on the NATS, Redis (one server or the 3+3 cluster) or PostgreSQL test server,
    isolated per test."""
    if request.param == "nats":
        return f"{request.getfixturevalue('nats_url')}?prefix={unique_name}&storage=memory"
    if request.param == "redis":
        return f"{request.getfixturevalue('redis_url')}?prefix={unique_name}"
    if request.param == "redis-cluster":
        return f"{request.getfixturevalue('redis_cluster_url')}?prefix={unique_name}"
    url: str = request.getfixturevalue("postgres_url")
    return url


async def _scheduler(url: str, unique_name: str) -> str | ScheduleStore:
    """The URL; for PostgreSQL (whose URL names no table) a store on a table of the test's own."""
    if not url.startswith("postgres"):
        return url
    return await PostgresScheduleStore.connect(url, table=f"schedules_{unique_name}")


async def test_two_replicas_deliver_each_schedule_once(scheduler_url: str, unique_name: str) -> None:
    apps = [
        catga.App(scheduler=await _scheduler(scheduler_url, unique_name), name="replicas") for _ in range(2)
    ]
    got = [_recorder(app) for app in apps]
    async with apps[0], apps[1]:
        now = time.time()
        for i in range(20):
            await apps[i % 2].schedule(Ping(i), at=now + 0.2 + i * 0.01, id=f"{unique_name}-{i}")
        await _until(lambda: len(got[0]) + len(got[1]) >= 20, "twenty deliveries")
        for i in range(20):
            await _until_gone(apps[0], f"{unique_name}-{i}")
    delivered = sorted(n for g in got for _, n, _, _ in g)
    assert delivered == list(range(20)), "a schedule was delivered twice or not at all"


async def _until_gone(app: catga.App, sid: str) -> None:
    async def gone() -> bool:
        return await app.schedules.get(sid) is None

    await eventually(gone, what=f"schedule {sid} completed")


async def test_a_schedule_survives_a_restart_of_the_app(scheduler_url: str, unique_name: str) -> None:
    """A process schedules a command and exits; another app delivers it once, at the due time."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    due_at = time.time() + 3.0  # the child has 3 s to start, schedule and stop
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD), scheduler_url, unique_name, repr(due_at), stdout=subprocess.PIPE, env=env
    )
    out, _ = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == 0
    report = json.loads(out)
    assert report["due_at"] == due_at
    assert time.time() < due_at, "the child took over 3 s to schedule and stop: the test proves nothing"
    app = catga.App(scheduler=await _scheduler(scheduler_url, unique_name), name="schedule-parent")
    got: list[tuple[float, int]] = []

    @app.handler
    async def remind(cmd: Remind, ctx: catga.Context) -> None:
        assert cmd.note == unique_name
        got.append((time.time(), ctx.message_id))

    async with app:
        await _until(lambda: len(got) == 1, "the delivery")
        await _until_gone(app, unique_name)
    assert got[0][0] >= report["due_at"], "delivered before its due time"
    assert got == [(got[0][0], report["message_id"])]


async def test_health_reports_the_scheduler_once_it_runs() -> None:
    app = catga.App()
    _recorder(app)
    async with app:
        assert "scheduler" not in {c.name for c in (await app.health()).checks}
        await app.schedule(Ping(1), after=0)
        await _until(lambda: app.scheduler is not None and app.scheduler.delivered == 1, "the delivery")
        health = await app.health()
        (check,) = [c for c in health.checks if c.name == "scheduler"]
        assert check.ok and check.detail == "delivered 1, failed 0, dead 0"


async def test_a_delivery_slower_than_the_lease_is_cancelled_and_retried() -> None:
    store = MemoryScheduleStore()
    calls: list[int] = []
    never = asyncio.Event()

    async def deliver(schedule: Schedule) -> None:
        calls.append(schedule.attempts)
        if len(calls) == 1:
            await never.wait()  # hangs: past the lease another scheduler could take it

    scheduler = Scheduler(store, deliver, lease=0.2, retry_backoff=0.01)
    await store.add(Schedule(id="slow", due_at=0.0, kind=EVENT, type_name="T", body=b"x"))
    async with scheduler:
        await _until(lambda: scheduler.delivered == 1, "the retried delivery")
    assert calls == [0, 1] and scheduler.failed == 1
    assert await store.get("slow") is None


async def test_a_cron_schedule_is_due_at_its_next_minute_and_moves_on_by_the_expression() -> None:
    app = catga.App()
    _recorder(app)
    async with app:
        before = time.time()
        sid = await app.schedule(Pinged(1), cron="*/5 * * * *")
        stored = await app.schedules.get(sid)
        assert stored is not None and stored.cron == "*/5 * * * *" and stored.every == 0
        assert stored.due_at > before and stored.due_at % 300 == 0 and stored.due_at - before <= 300
        assert next_due(stored, stored.due_at + 1) == stored.due_at + 300
        assert occurrence_id(stored) != int(stored.headers["Catga-Id"])  # recurring: per occurrence
        with pytest.raises(ConfigurationError, match="not both"):
            await app.schedule(Pinged(1), cron="@hourly", every=60)
        with pytest.raises(ConfigurationError, match="5 fields"):
            await app.schedule(Pinged(1), cron="every day")
        at = datetime(2030, 1, 1, 8, 0, tzinfo=UTC)
        sid = await app.schedule(Pinged(2), cron="0 8 * * *", at=at)
        stored = await app.schedules.get(sid)
        assert stored is not None and stored.due_at == at.timestamp()  # a start on the minute counts
        assert await app.cancel_schedule(sid) is True


async def test_every_alone_is_first_due_one_interval_from_now() -> None:
    app = catga.App()
    _recorder(app)
    async with app:
        before = time.time()
        sid = await app.schedule(Pinged(1), every=timedelta(minutes=5))
        stored = await app.schedules.get(sid)
        assert stored is not None and stored.every == 300
        assert before + 300 <= stored.due_at <= time.time() + 300
