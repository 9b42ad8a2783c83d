"""Projections: dispatch, catch-up in batches, live, checkpoints, resume, failures, stop."""

from __future__ import annotations

import asyncio

import pytest
from es_domain import Closed, CountingStore, Deposited, Opened, Withdrawn

from catga.errors import CatgaError, ConfigurationError, InvalidIdentifierError, OperationTimeoutError
from catga.eventsourcing import MemoryCheckpointStore, Projection, ProjectionRunner, handles
from catga.memory.event_store import MemoryEventStore
from catga.protocols import StoredEvent


class Balances(Projection):
    """Sync and async handlers, with and without the stored record."""

    def __init__(self) -> None:
        self.owners: dict[str, str] = {}
        self.balances: dict[str, int] = {}
        self.positions: list[int] = []
        self.flushes = 0

    @handles(Opened)
    def _opened(self, event: Opened, stored: StoredEvent) -> None:
        self.owners[stored.stream_id] = event.owner
        self.positions.append(stored.position)

    @handles(Deposited)
    async def _deposited(self, event: Deposited, stored: StoredEvent) -> None:
        self.balances[stored.stream_id] = self.balances.get(stored.stream_id, 0) + event.amount
        self.positions.append(stored.position)

    @handles(Withdrawn)
    async def _withdrawn(self, event: Withdrawn) -> None:
        self.positions.append(-1)

    async def flush(self) -> None:
        self.flushes += 1


class RecordingCheckpoints(MemoryCheckpointStore):
    def __init__(self) -> None:
        super().__init__()
        self.saved: list[int] = []

    async def save(self, name: str, position: int) -> None:
        self.saved.append(position)
        await super().save(name, position)


async def deposit_many(store: MemoryEventStore, stream: str, amounts: list[int]) -> None:
    for amount in amounts:
        await store.append(stream, [Deposited(amount)])


async def test_dispatch_ignores_events_without_handler() -> None:
    store = MemoryEventStore()
    await store.append("acc-1", [Opened("ada"), Closed(), Deposited(3), Withdrawn(amount=1)])
    projection = Balances()
    for event in await store.read_all():
        await projection.handle(event)
    assert projection.owners == {"acc-1": "ada"}
    assert projection.balances == {"acc-1": 3}
    assert projection.positions == [1, 3, -1]


def test_bad_handler_signature_is_rejected_at_class_creation() -> None:
    with pytest.raises(ConfigurationError, match=r"must take \(self, event\)"):

        class Bad(Projection):
            @handles(Opened)
            def _opened(self) -> None: ...


async def test_catch_up_reads_in_batches_and_checkpoints_each_batch() -> None:
    inner = MemoryEventStore()
    store = CountingStore(inner)
    await deposit_many(inner, "acc-1", [1, 2, 3, 4, 5, 6, 7])
    checkpoints = RecordingCheckpoints()
    projection = Balances()
    runner = ProjectionRunner(store, projection, checkpoints, "balances", batch_size=3)

    async with runner:
        await runner.wait_for_position(7)
        assert runner.position == 7

    assert store.read_alls == [(1, 3), (4, 3), (7, 3)]
    assert checkpoints.saved == [3, 6, 7]
    assert projection.flushes == 3
    assert projection.balances == {"acc-1": 28}
    assert projection.positions == [1, 2, 3, 4, 5, 6, 7]
    assert await checkpoints.get("balances") == 7


async def test_goes_live_after_catch_up() -> None:
    store = MemoryEventStore()
    await deposit_many(store, "acc-1", [1, 2])
    checkpoints = RecordingCheckpoints()
    projection = Balances()
    async with ProjectionRunner(store, projection, checkpoints, "balances") as runner:
        await runner.wait_for_position(2)
        await store.append("acc-2", [Opened("bob"), Deposited(10)])
        await runner.wait_for_position(4)
        assert runner.live
        await store.append("acc-1", [Deposited(5)])
        await runner.wait_for_position(5)
    assert projection.owners == {"acc-2": "bob"}
    assert projection.balances == {"acc-1": 8, "acc-2": 10}
    assert projection.positions == [1, 2, 3, 4, 5]
    assert checkpoints.saved == [2, 3, 4, 5]  # one batch, then one per live event
    assert not runner.live
    assert not runner.running


async def test_restart_resumes_after_the_checkpoint_without_reprocessing() -> None:
    store = MemoryEventStore()
    checkpoints = MemoryCheckpointStore()
    await deposit_many(store, "acc-1", [1, 2, 3])
    first = Balances()
    async with ProjectionRunner(store, first, checkpoints, "balances") as runner:
        await runner.wait_for_position(3)
        await deposit_many(store, "acc-1", [4])
        await runner.wait_for_position(4)
    assert first.positions == [1, 2, 3, 4]

    await deposit_many(store, "acc-1", [5, 6])  # appended while stopped
    second = Balances()
    async with ProjectionRunner(store, second, checkpoints, "balances") as runner:
        await runner.wait_for_position(6)
        await deposit_many(store, "acc-1", [7])
        await runner.wait_for_position(7)
    assert second.positions == [5, 6, 7]
    assert second.balances == {"acc-1": 5 + 6 + 7}
    assert await checkpoints.get("balances") == 7

    other = Balances()  # another name has its own checkpoint: starts from the beginning
    async with ProjectionRunner(store, other, checkpoints, "audit") as runner:
        await runner.wait_for_position(7)
    assert other.positions == [1, 2, 3, 4, 5, 6, 7]


class Flaky(Projection):
    def __init__(self, fail_on: int) -> None:
        self.fail_on = fail_on
        self.seen: list[int] = []

    @handles(Deposited)
    def _deposited(self, event: Deposited, stored: StoredEvent) -> None:
        if event.amount == self.fail_on:
            raise RuntimeError(f"cannot handle {event.amount}")
        self.seen.append(stored.position)


@pytest.mark.parametrize("live", [False, True])
async def test_handler_error_stops_the_runner_and_keeps_progress(
    live: bool, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryEventStore()
    checkpoints = MemoryCheckpointStore()
    projection = Flaky(fail_on=3)
    runner = ProjectionRunner(store, projection, checkpoints, "flaky", batch_size=10)
    if live:
        task = runner.start()
        await runner.wait_until_live()
        waiter = asyncio.create_task(runner.wait_for_position(9, timeout=30))
        await deposit_many(store, "acc-1", [1, 2, 3, 4])
    else:
        await deposit_many(store, "acc-1", [1, 2, 3, 4])
        task = runner.start()
        waiter = asyncio.create_task(runner.wait_for_position(9, timeout=30))

    with pytest.raises(RuntimeError, match="cannot handle 3"):
        await task
    assert isinstance(runner.error, RuntimeError)
    assert not runner.running
    assert projection.seen == [1, 2]
    assert await checkpoints.get("flaky") == 2  # the events before the failure are kept
    assert "stream 'acc-1', version 2, position 3" in caplog.text
    with pytest.raises(CatgaError, match="stopped at position 2 before reaching 9: cannot handle 3"):
        await waiter

    await runner.stop()
    projection.fail_on = -1  # fixed: a restart retries the failed event first
    async with ProjectionRunner(store, projection, checkpoints, "flaky") as again:
        await again.wait_for_position(4)
    assert projection.seen == [1, 2, 3, 4]


async def test_stop_interrupts_an_idle_live_wait_and_is_idempotent() -> None:
    store = MemoryEventStore()
    runner = ProjectionRunner(store, Balances(), MemoryCheckpointStore(), "idle")
    task = runner.start()
    await runner.wait_until_live()
    await runner.stop(timeout=30)
    assert task.done()
    assert not task.cancelled()  # a graceful stop, not a cancelled task
    assert runner.error is None
    await runner.stop()
    await runner.aclose()
    with pytest.raises(CatgaError, match="stopped at position 0 before reaching 1; start it again"):
        await runner.wait_for_position(1)
    with pytest.raises(CatgaError, match="stopped at position 0 before going live"):
        await runner.wait_until_live()


async def test_stop_of_an_inline_run_returns_normally() -> None:
    store = MemoryEventStore()
    await deposit_many(store, "acc-1", [1])
    runner = ProjectionRunner(store, Balances(), MemoryCheckpointStore(), "inline")

    async def main() -> str:
        await runner.run()  # returns when stopped, without raising CancelledError
        return "returned"

    task = asyncio.create_task(main())
    await runner.wait_for_position(1)
    await runner.wait_until_live()
    await runner.stop()
    assert await task == "returned"


async def test_stop_before_the_task_starts_runs_nothing() -> None:
    store = MemoryEventStore()
    await deposit_many(store, "acc-1", [1, 2])
    projection = Balances()
    runner = ProjectionRunner(store, projection, MemoryCheckpointStore(), "early")
    runner.start()
    await runner.stop()
    assert projection.positions == []
    assert runner.position == 0


async def test_cancelling_the_task_propagates_cancellation() -> None:
    runner = ProjectionRunner(MemoryEventStore(), Balances(), MemoryCheckpointStore(), "cancel")
    task = asyncio.create_task(runner.run())
    await runner.wait_until_live()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not runner.running


async def test_running_twice_is_refused() -> None:
    runner = ProjectionRunner(MemoryEventStore(), Balances(), MemoryCheckpointStore(), "twice")
    async with runner:
        with pytest.raises(ConfigurationError, match="already started"):
            runner.start()
        await asyncio.sleep(0)
        with pytest.raises(ConfigurationError, match="already running"):
            await runner.run()


async def test_wait_for_position_times_out() -> None:
    async with ProjectionRunner(MemoryEventStore(), Balances(), MemoryCheckpointStore(), "wait") as r:
        with pytest.raises(OperationTimeoutError, match="reaching position 5"):
            await r.wait_for_position(5, timeout=0.05)


class Blocked(Projection):
    def __init__(self) -> None:
        self.release = asyncio.Event()

    @handles(Deposited)
    async def _deposited(self, event: Deposited) -> None:
        await self.release.wait()


async def test_wait_until_live_times_out_then_succeeds_and_waiters_fail_on_error() -> None:
    store = MemoryEventStore()
    await deposit_many(store, "acc-1", [1])
    projection = Blocked()
    runner = ProjectionRunner(store, projection, MemoryCheckpointStore(), "blocked")
    async with runner:
        with pytest.raises(OperationTimeoutError, match="going live"):
            await runner.wait_until_live(timeout=0.05)
        assert not runner.live
        projection.release.set()
        await runner.wait_until_live()
        assert runner.position == 1

    failing = ProjectionRunner(store, Flaky(fail_on=1), MemoryCheckpointStore(), "failing")
    task = failing.start()
    with pytest.raises(CatgaError, match="before going live: cannot handle 1"):
        await failing.wait_until_live()
    with pytest.raises(RuntimeError):
        await task


async def test_store_end_finishes_the_run() -> None:
    store = MemoryEventStore()
    await deposit_many(store, "acc-1", [1])
    projection = Balances()
    runner = ProjectionRunner(store, projection, MemoryCheckpointStore(), "ends")
    task = runner.start()
    await runner.wait_for_position(1)
    await store.aclose()  # the memory store ends live subscriptions on close
    await asyncio.wait_for(task, 30)
    assert projection.positions == [1]
    assert runner.error is None


def test_options_are_validated() -> None:
    with pytest.raises(InvalidIdentifierError, match="projection name"):
        ProjectionRunner(MemoryEventStore(), Balances(), MemoryCheckpointStore(), "no spaces")
    with pytest.raises(ConfigurationError, match="batch_size"):
        ProjectionRunner(MemoryEventStore(), Balances(), MemoryCheckpointStore(), "x", batch_size=0)
