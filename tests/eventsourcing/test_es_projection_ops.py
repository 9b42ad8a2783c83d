"""Projections in production: error policy (retry, park, stop), rebuild, lag in health and as a metric,
and one owner across runners sharing a lock (fenced checkpoints, takeover)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from es_domain import Deposited, Opened
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import catga
from catga.dead_letters import ReplayStatus, replay_dead_letters
from catga.errors import CatgaError, ConfigurationError
from catga.eventsourcing import (
    ErrorPolicy,
    MemoryCheckpointStore,
    Projection,
    ProjectionRunner,
    Projections,
    SaveCheckpoint,
    handles,
)
from catga.memory import MemoryDeadLetterQueue, MemoryLock, MemoryTransport
from catga.memory.event_store import MemoryEventStore
from catga.protocols import PROJECTION, Lease, StoredEvent
from catga.testing.contracts._util import eventually


async def deposits(store: MemoryEventStore, n: int, stream: str = "acc-1") -> None:
    for amount in range(1, n + 1):
        await store.append(stream, [Deposited(amount)])


class Model:
    """A read model that commits with its checkpoint: rows become visible only if the save succeeds."""

    def __init__(self) -> None:
        self.rows: list[int] = []


class Transactional(Projection):
    def __init__(self, model: Model, *, block_at: int | None = None, fail: dict[int, int] | None = None):
        self.model = model
        self.pending: list[int] = []
        self.block_at = block_at
        self.blocked = asyncio.Event()
        self.unblock = asyncio.Event()
        self.fail = dict(fail or {})  # position -> failures left (-1: always)
        self.attempts: dict[int, int] = {}

    @handles(Deposited, Opened)
    async def _any(self, event: Any, stored: StoredEvent) -> None:
        p = stored.position
        self.attempts[p] = self.attempts.get(p, 0) + 1
        if p == self.block_at:
            self.block_at = None
            self.blocked.set()
            await self.unblock.wait()
        left = self.fail.get(p, 0)
        if left:
            self.fail[p] = left - 1
            raise RuntimeError(f"boom at {p}")
        self.pending.append(p)

    async def commit(self, position: int, save: SaveCheckpoint) -> None:
        await save()  # refused for a stale owner: the rows below are then never applied
        self.model.rows.extend(self.pending)
        self.pending.clear()

    async def discard(self) -> None:
        self.pending.clear()

    async def reset(self) -> None:
        self.model.rows.clear()


class NoRenewLock:
    """A lock whose leases are never renewed: an owner that blocks past its ttl loses the lease,
    like a process paused by GC or swap."""

    def __init__(self, lock: MemoryLock) -> None:
        self.lock = lock

    async def acquire(
        self, key: str, *, ttl: float = 30.0, wait: float = 0.0, auto_renew: bool = False
    ) -> Lease:
        return await self.lock.acquire(key, ttl=ttl, wait=wait)

    async def aclose(self) -> None:
        await self.lock.aclose()


# -- error policy -------------------------------------------------------------------------------------


async def test_retries_with_backoff_then_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryEventStore()
    await deposits(store, 5)
    model = Model()
    projection = Transactional(model, fail={3: 2})
    policy = ErrorPolicy(retries=3, backoff=0.01)
    async with ProjectionRunner(
        store, projection, MemoryCheckpointStore(), "retry", on_error=policy
    ) as runner:
        await runner.wait_for_position(5)
    assert model.rows == [1, 2, 3, 4, 5]
    assert projection.attempts[3] == 3
    assert caplog.text.count("retry ") == 2


async def test_stop_policy_gives_up_after_the_retries() -> None:
    store = MemoryEventStore()
    await deposits(store, 5)
    model = Model()
    checkpoints = MemoryCheckpointStore()
    projection = Transactional(model, fail={4: -1})
    runner = ProjectionRunner(
        store, projection, checkpoints, "stops", on_error=ErrorPolicy(retries=2, backoff=0)
    )
    with pytest.raises(RuntimeError, match="boom at 4"):
        await runner.run()
    assert projection.attempts[4] == 3
    assert model.rows == [1, 2, 3] and await checkpoints.get("stops") == 3


async def test_park_policy_parks_the_event_and_continues(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryEventStore()
    await store.append("acc-1", [Opened("ada")], metadata={"message_id": "m-1"})
    await deposits(store, 4)
    model = Model()
    dlq = MemoryDeadLetterQueue()
    checkpoints = MemoryCheckpointStore()
    policy = ErrorPolicy(retries=1, backoff=0, then="park")
    projection = Transactional(model, fail={1: -1, 3: -1})
    async with ProjectionRunner(
        store, projection, checkpoints, "parks", on_error=policy, dead_letters=dlq
    ) as runner:
        await runner.wait_for_position(5)
        assert runner.parked == 2
    assert model.rows == [2, 4, 5] and await checkpoints.get("parks") == 5
    letters = {letter.id: letter for letter in await dlq.list()}
    assert set(letters) == {"parks-1", "parks-3"}
    first = letters["parks-1"]
    assert first.kind == PROJECTION and first.source == "parks" and first.attempts == 2
    assert first.body == b'{"owner":"ada"}' and first.error == "RuntimeError: boom at 1"
    assert first.headers["Catga-Position"] == "1" and first.headers["Catga-Stream"] == "acc-1"
    assert first.message_id == "m-1"
    assert "parked event" in caplog.text
    # a parked event is not replayed through a transport (no projection would see it)
    async with MemoryTransport() as transport:
        [outcome] = await replay_dead_letters(transport, dlq, ["parks-1"])
    assert outcome.status is ReplayStatus.FAILED and "parked by projection 'parks'" in outcome.error
    assert await dlq.get("parks-1") is not None


def test_policy_options_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        ErrorPolicy(retries=-1)
    with pytest.raises(ConfigurationError):
        ErrorPolicy(then="skip")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="dead-letter queue"):
        ProjectionRunner(
            MemoryEventStore(), Projection(), MemoryCheckpointStore(), "p", on_error=ErrorPolicy(then="park")
        )
    with pytest.raises(ConfigurationError):
        ProjectionRunner(MemoryEventStore(), Projection(), MemoryCheckpointStore(), "p", lease_ttl=0)
    assert ErrorPolicy(backoff=0.1, max_backoff=0.3).delay(1) == 0.1
    assert ErrorPolicy(backoff=0.1, max_backoff=0.3).delay(5) == 0.3


# -- rebuild --------------------------------------------------------------------------------------------


async def test_rebuild_of_a_running_projection_resets_and_replays() -> None:
    store = MemoryEventStore()
    await deposits(store, 6)
    model = Model()
    checkpoints = MemoryCheckpointStore()
    async with ProjectionRunner(store, Transactional(model), checkpoints, "rb") as runner:
        await runner.wait_for_position(6)
        await runner.wait_until_live()
        await runner.rebuild()
        await runner.wait_for_position(6)
        await deposits(store, 1)
        await runner.wait_for_position(7)
    assert model.rows == [1, 2, 3, 4, 5, 6, 7]
    assert await checkpoints.get("rb") == 7


async def test_rebuild_of_a_stopped_projection_starts_over_on_the_next_run() -> None:
    store = MemoryEventStore()
    await deposits(store, 3)
    model = Model()
    checkpoints = MemoryCheckpointStore()
    runner = ProjectionRunner(store, Transactional(model), checkpoints, "rb2", lock=MemoryLock())
    async with runner:
        await runner.wait_for_position(3)
    await runner.rebuild()
    assert model.rows == [] and await checkpoints.get("rb2") == 0
    async with runner:
        await runner.wait_for_position(3)
    assert model.rows == [1, 2, 3]


async def test_a_projection_without_reset_cannot_be_rebuilt() -> None:
    runner = ProjectionRunner(MemoryEventStore(), Projection(), MemoryCheckpointStore(), "nr")
    with pytest.raises(ConfigurationError, match="override reset"):
        await runner.rebuild()


# -- lag, health, metric ----------------------------------------------------------------------------------


async def test_lag_is_in_health_and_in_the_metric() -> None:
    store = MemoryEventStore()
    await deposits(store, 4)
    model = Model()
    projection = Transactional(model, block_at=3)
    runner = ProjectionRunner(store, projection, MemoryCheckpointStore(), "lagging", batch_size=2)
    reader = InMemoryMetricReader()
    app = catga.App()
    app.add_component(Projections(runner, meter_provider=MeterProvider(metric_readers=[reader])))
    async with app:
        await asyncio.wait_for(projection.blocked.wait(), 10)
        report = await app.health()
        [check] = [c for c in report.checks if c.name == "projections"]
        assert check.ok and "lagging: catching up at position 2, lag 2" in check.detail, check
        assert _gauge(reader) == {"lagging": 2}
        projection.unblock.set()
        await runner.wait_for_position(4)
        await runner.wait_until_live()
        [check] = [c for c in (await app.health()).checks if c.name == "projections"]
        assert "lagging: live at position 4, lag 0" in check.detail
        assert _gauge(reader) == {"lagging": 0}
    report = await app.health()
    assert not report.ok


async def test_health_fails_when_a_runner_stopped_on_an_error() -> None:
    store = MemoryEventStore()
    await deposits(store, 2)
    runner = ProjectionRunner(store, Transactional(Model(), fail={2: -1}), MemoryCheckpointStore(), "broken")
    app = catga.App()
    app.add_component(Projections(runner))
    async with app:
        with pytest.raises(CatgaError, match="boom at 2"):
            await runner.wait_for_position(2)
        [check] = [c for c in (await app.health()).checks if c.name == "projections"]
    assert not check.ok and "'broken' is not running: RuntimeError: boom at 2" in check.detail


async def _true(value: bool) -> bool:
    return value


def _gauge(reader: InMemoryMetricReader) -> dict[str, int]:
    out: dict[str, int] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "catga.projection.lag":
                    for p in metric.data.data_points:
                        out[str(p.attributes["catga.projection"])] = int(p.value)
    return out


# -- one owner across runners ---------------------------------------------------------------------------


async def test_one_owner_at_a_time_and_takeover_when_it_stops() -> None:
    store = MemoryEventStore()
    await deposits(store, 10)
    model = Model()
    lock = MemoryLock()
    checkpoints = MemoryCheckpointStore()
    a = ProjectionRunner(store, Transactional(model), checkpoints, "shared", lock=lock, lease_ttl=5)
    b = ProjectionRunner(store, Transactional(model), checkpoints, "shared", lock=lock, lease_ttl=5)
    a.start()
    await a.wait_for_position(10)
    b.start()
    await deposits(store, 5)
    await a.wait_for_position(15)
    assert a.owner and not b.owner and b.running
    assert (await b.health_check()).endswith("standby (another replica owns it)")
    await a.stop()  # releases the lease: b takes over at once
    await deposits(store, 5)
    await b.wait_for_position(20)
    assert b.owner
    await b.stop()
    assert model.rows == list(range(1, 21))


async def test_a_stale_owner_cannot_commit_after_a_takeover(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryEventStore()
    await deposits(store, 8)
    model = Model()
    lock = NoRenewLock(MemoryLock())
    checkpoints = MemoryCheckpointStore()
    stale = Transactional(model, block_at=3)
    a = ProjectionRunner(store, stale, checkpoints, "fenced", lock=lock, lease_ttl=0.3, batch_size=4)
    b = ProjectionRunner(store, Transactional(model), checkpoints, "fenced", lock=lock, lease_ttl=30)
    a.start()
    await asyncio.wait_for(stale.blocked.wait(), 10)  # a holds events 1-2 uncommitted, paused at 3
    b.start()
    await b.wait_for_position(8, timeout=20)  # a's lease expired: b took over and replayed 1..8
    assert b.owner and b.fencing_token is not None and a.fencing_token is not None
    assert b.fencing_token > a.fencing_token
    stale.unblock.set()  # a wakes up and tries to commit 1-4 with its old token
    await eventually(lambda: _true(not a.owner), what="the stale owner stands by")
    assert "another replica took it over" in caplog.text
    await deposits(store, 2)
    await b.wait_for_position(10)
    await asyncio.gather(a.stop(), b.stop())
    assert model.rows == list(range(1, 11))  # none skipped, none applied twice
    assert await checkpoints.get("fenced") == 10


async def test_stop_interrupts_a_retry_backoff_and_keeps_the_events_before() -> None:
    store = MemoryEventStore()
    await deposits(store, 4)
    model = Model()
    checkpoints = MemoryCheckpointStore()
    projection = Transactional(model, fail={3: -1})
    policy = ErrorPolicy(retries=5, backoff=60.0, max_backoff=60.0)  # a long wait before each retry
    runner = ProjectionRunner(store, projection, checkpoints, "backoff", on_error=policy)
    task = runner.start()
    await eventually(lambda: _true(projection.attempts.get(3) == 1), what="the first failure")
    await runner.stop(timeout=30)
    assert task.done() and not task.cancelled() and runner.error is None  # interrupted, not failed
    assert model.rows == [1, 2] and await checkpoints.get("backoff") == 2
    assert projection.attempts[3] == 1  # the retry never ran: the event is handled again on restart


async def test_a_lost_lease_is_given_up_then_taken_again_with_a_new_token() -> None:
    store = MemoryEventStore()
    await deposits(store, 3)
    model = Model()
    checkpoints = MemoryCheckpointStore()
    runner = ProjectionRunner(
        store, Transactional(model), checkpoints, "relost", lock=MemoryLock(), lease_ttl=5
    )
    async with runner:
        await runner.wait_for_position(3)
        await runner.wait_until_live()
        lease, token = runner._lease, runner.fencing_token
        assert lease is not None and token is not None
        lease.lost = True  # what auto-renewal does when it finds the key expired or taken
        await deposits(store, 2)
        await eventually(lambda: _true(runner.fencing_token not in (None, token)), what="a new lease")
        await runner.wait_for_position(5)
    assert model.rows == [1, 2, 3, 4, 5]


async def test_a_rebuild_asked_of_a_standby_is_done_when_it_takes_over() -> None:
    store = MemoryEventStore()
    await deposits(store, 3)
    model_a, model_b = Model(), Model()
    lock = MemoryLock()
    checkpoints = MemoryCheckpointStore()
    a = ProjectionRunner(store, Transactional(model_a), checkpoints, "sb", lock=lock)
    b = ProjectionRunner(store, Transactional(model_b), checkpoints, "sb", lock=lock)
    a.start()
    await a.wait_for_position(3)
    b.start()
    rebuild = asyncio.create_task(b.rebuild())
    await asyncio.sleep(0)
    assert not rebuild.done() and not b.owner
    await a.stop()
    await asyncio.wait_for(rebuild, 10)
    await b.wait_for_position(3)
    await b.stop()
    assert model_a.rows == [1, 2, 3] and model_b.rows == [1, 2, 3]  # b replayed everything into its model


async def test_a_failed_commit_discards_and_stops_then_a_restart_replays_the_batch() -> None:
    store = MemoryEventStore()
    await deposits(store, 3)
    model = Model()
    checkpoints = MemoryCheckpointStore()

    class FailingOnce(Transactional):
        failed = False

        async def commit(self, position: int, save: SaveCheckpoint) -> None:
            if not self.failed:
                self.failed = True
                raise ConnectionError("database gone")
            await super().commit(position, save)

    projection = FailingOnce(model)
    runner = ProjectionRunner(store, projection, checkpoints, "commits")
    with pytest.raises(ConnectionError):
        await runner.run()
    assert projection.pending == [] and model.rows == [] and await checkpoints.get("commits") == 0
    async with runner:
        await runner.wait_for_position(3)
    assert model.rows == [1, 2, 3]
