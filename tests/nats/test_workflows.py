"""The WorkflowStore contract on a NATS KV-layout bucket (memory and file storage), the store's own
layout (one fence per workflow, kept views, the sweep's watermark), and an app running workflows on it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

import catga
from catga.errors import BackendError, ConcurrencyError, StaleFencingTokenError
from catga.nats import NatsConnection, NatsWorkflowStore, _workflow_sweep
from catga.nats._jsapi import StreamMessage
from catga.nats._kv import KvEntry
from catga.testing import FakeClock, NatsCluster
from catga.testing.contracts import WorkflowStoreContract
from catga.workflows import COMPLETED, RUNNING, SLEEPING, HistoryEntry, Workflow, WorkflowInstance
from wf_waits_shared import check_send_then_wait

pytestmark = pytest.mark.nats


class TestNatsWorkflowStore(WorkflowStoreContract):
    record_reports_cancel = True

    @pytest.fixture(params=["memory", "file"])
    async def workflow_stores(
        self,
        request: pytest.FixtureRequest,
        nats_connection: NatsConnection,
        nats_url: str,
        unique_name: str,
        doomed_streams: list[str],
    ) -> AsyncIterator[tuple[NatsWorkflowStore, NatsWorkflowStore]]:
        doomed_streams.append(f"KV_{unique_name}")
        async with await NatsConnection.connect(nats_url, name="catga-tests-b") as other:
            a = NatsWorkflowStore(nats_connection, bucket=unique_name, storage=request.param)
            b = NatsWorkflowStore(other, bucket=unique_name, storage=request.param)
            yield a, b
            await a.aclose()
            await b.aclose()


async def test_an_app_runs_a_sleeping_workflow_on_nats(
    nats_connection: NatsConnection, unique_name: str, doomed_streams: list[str]
) -> None:
    doomed_streams.append(f"KV_{unique_name}")
    store = NatsWorkflowStore(nats_connection, bucket=unique_name, storage="memory")
    app = catga.App(workflows=store)

    async def double(n: int) -> int:
        return n * 2

    @app.workflow
    async def flow(wf: Workflow, n: int) -> int:
        a, b = await wf.all(wf.step(double, n), wf.step(double, n + 1))  # concurrent records
        await wf.sleep(0.05)
        return a + b

    async with app:
        state = await app.wait_workflow(await app.start_workflow(flow, 20, id="nats.1"))
    assert state.status == COMPLETED and app.workflows.result(state) == 82
    assert [e.kind for e in await store.history("nats.1")] == ["step", "step", "sleep"]


async def test_a_nats_url_builds_the_workflow_store(
    nats_url: str, unique_name: str, doomed_streams: list[str]
) -> None:
    doomed_streams.append(f"KV_{unique_name}_workflows")
    app = catga.App(workflows=f"{nats_url}?prefix={unique_name}&storage=memory")
    assert isinstance(app.workflows.store, NatsWorkflowStore)
    assert app.workflows.store.bucket == f"{unique_name}_workflows"

    @app.workflow
    async def hello(wf: Workflow, name: str) -> str:
        return f"hello {name}"

    async with app:
        state = await app.wait_workflow(await app.start_workflow(hello, "nats"))
    assert app.workflows.result(state) == "hello nats"


# -- the store's own layout: one fence per workflow, kept views, the sweep's watermark --------------


@pytest.fixture
async def two_stores(
    nats_connection: NatsConnection, nats_url: str, unique_name: str, doomed_streams: list[str]
) -> AsyncIterator[tuple[NatsWorkflowStore, NatsWorkflowStore]]:
    """Two store objects (two connections, as two replicas) on one fresh file-storage bucket."""
    doomed_streams.append(f"KV_{unique_name}")
    async with await NatsConnection.connect(nats_url, name="catga-tests-b") as other:
        a = NatsWorkflowStore(nats_connection, bucket=unique_name)
        yield a, NatsWorkflowStore(other, bucket=unique_name)


def _new(id: str) -> WorkflowInstance:
    return WorkflowInstance(id=id, name="order", version=1, input=b"{}")


async def test_a_kept_view_never_overwrites_another_replicas_write(
    two_stores: tuple[NatsWorkflowStore, NatsWorkflowStore],
) -> None:
    a, b = two_stores
    await a.create(_new("wf-1"))
    token = await a.acquire("wf-1", "r1", 60.0)  # a keeps its view of wf-1: its next writes read nothing
    assert token is not None
    assert await b.request_cancel("wf-1") is True  # a's view is stale now
    await a.record("wf-1", token, HistoryEntry(seq=0, kind="step", name="one"))
    await a.update("wf-1", token, RUNNING)
    found = await b.get("wf-1")
    assert found is not None and (found.status, found.cancel_requested) == (RUNNING, True)
    assert [e.name for e in await b.history("wf-1")] == ["one"]


async def test_concurrent_records_of_one_step_number_store_one(
    two_stores: tuple[NatsWorkflowStore, NatsWorkflowStore],
) -> None:
    a, b = two_stores
    await a.create(_new("wf-1"))
    token = await a.acquire("wf-1", "r1", 60.0)
    assert token is not None
    await b.history("wf-1")  # b keeps a view too
    attempts = [
        store.record("wf-1", token, HistoryEntry(seq=0, kind="step", name=f"{name}{n}"))
        for n in range(8)
        for name, store in (("a", a), ("b", b))
    ]
    outcomes = await asyncio.gather(*attempts, return_exceptions=True)
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 1
    assert all(isinstance(o, ConcurrencyError) for o in outcomes if isinstance(o, BaseException))
    assert len(await a.history("wf-1")) == 1


async def test_a_record_under_a_taken_over_lease_is_refused_even_from_a_kept_view(
    two_stores: tuple[NatsWorkflowStore, NatsWorkflowStore], fake_clock: FakeClock
) -> None:
    a, b = two_stores
    await a.create(_new("wf-1"))
    old = await a.acquire("wf-1", "r1", 1.0)
    assert old is not None
    fake_clock.advance(2.0)  # the lease ends
    new = await b.acquire("wf-1", "r2", 60.0)
    assert new is not None and new > old
    with pytest.raises(StaleFencingTokenError):
        await a.record("wf-1", old, HistoryEntry(seq=0, kind="step", name="stale"))
    with pytest.raises(StaleFencingTokenError):
        await a.update("wf-1", old, COMPLETED)
    assert await a.history("wf-1") == []


async def test_a_lease_taken_through_another_store_object_is_honoured_here(
    two_stores: tuple[NatsWorkflowStore, NatsWorkflowStore], fake_clock: FakeClock
) -> None:
    a, b = two_stores
    await a.create(_new("wf-1"))
    old = await a.acquire("wf-1", "r1", 1.0)  # a's kept view: token `old`
    assert old is not None
    fake_clock.advance(2.0)
    new = await b.acquire("wf-1", "r2", 60.0)
    assert new is not None
    await a.record("wf-1", new, HistoryEntry(seq=0, kind="step", name="one"))  # not refused on a's view
    assert await a.renew("wf-1", new, 60.0) is True
    await a.update("wf-1", new, COMPLETED)
    assert [e.name for e in await b.history("wf-1")] == ["one"]


class _CountingReads:
    """Counts the instances a store's sweeps read: scanned, and got by id."""

    def __init__(self, store: NatsWorkflowStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.scanned = self.got = 0
        bucket = store._bucket
        messages, get_subject = bucket.messages, bucket.get_subject

        async def counting_messages(
            subject: str, start: int = 1, *, fresh: bool = False
        ) -> AsyncIterator[StreamMessage]:
            async for m in messages(subject, start, fresh=fresh):
                self.scanned += 1
                yield m

        async def counting_get(subject: bytes, key: str) -> KvEntry | None:
            self.got += 1
            return await get_subject(subject, key)

        monkeypatch.setattr(bucket, "messages", counting_messages)
        monkeypatch.setattr(bucket, "get_subject", counting_get)

    def take(self) -> tuple[int, int]:
        """(scanned, got) since the last call."""
        counts = (self.scanned, self.got)
        self.scanned = self.got = 0
        return counts


async def _finish(store: NatsWorkflowStore, id: str) -> None:
    token = await store.acquire(id, "r1", 60.0)
    assert token is not None
    await store.update(id, token, COMPLETED, result=b"1")
    await store.release(id, token)


async def _sleep(store: NatsWorkflowStore, id: str, wake_at: float, wait_for: str = "") -> None:
    token = await store.acquire(id, "r1", 60.0)
    assert token is not None
    await store.update(id, token, SLEEPING, wake_at=wake_at, wait_for=wait_for)
    await store.release(id, token)


async def test_a_sweep_reads_finished_workflows_once(
    two_stores: tuple[NatsWorkflowStore, NatsWorkflowStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, sweeper = two_stores
    ids = [f"wf-{n}" for n in range(30)]
    for id in ids:
        await a.create(_new(id))
        await _finish(a, id)
    reads = _CountingReads(sweeper, monkeypatch)
    assert await sweeper.due() == []
    assert reads.take() == (30, 0)  # the first sweep reads them all
    assert await sweeper.due() == [] and await sweeper.waiting("shop.Paid") == []
    assert reads.take() == (0, 0)  # then never again
    await a.create(_new("wf-new"))
    assert await sweeper.due() == ["wf-new"]
    assert reads.take() == (1, 0)
    await _finish(a, "wf-new")
    assert await sweeper.due() == []
    assert await sweeper.due() == []
    assert reads.take() == (1, 0)  # its finished revision once, then nothing


async def test_a_long_sleeper_does_not_make_sweeps_read_finished_workflows_again(
    two_stores: tuple[NatsWorkflowStore, NatsWorkflowStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, sweeper = two_stores
    await a.create(_new("sleeper"))
    await _sleep(a, "sleeper", time.time() + 3600, wait_for="shop.Paid")
    for n in range(10):
        await a.create(_new(f"wf-{n}"))
        await _finish(a, f"wf-{n}")
    reads = _CountingReads(sweeper, monkeypatch)
    assert await sweeper.due() == []
    assert reads.take() == (11, 0)
    assert [i.id for i in await sweeper.waiting("shop.Paid")] == ["sleeper"]  # found below the watermark
    assert reads.take() == (0, 1)  # by id, not by reading the finished ones again
    await a.create(_new("later"))
    assert await sweeper.due() == ["later"]
    await _sleep(a, "sleeper", time.time() - 1)  # due now: a new revision, above the watermark
    assert set(await sweeper.due()) == {"later", "sleeper"}


async def test_past_its_limit_a_sweep_scans_from_the_oldest_unfinished_instance_it_does_not_keep(
    two_stores: tuple[NatsWorkflowStore, NatsWorkflowStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_workflow_sweep, "KEPT_BELOW", 2)
    a, sweeper = two_stores
    for n in range(4):  # pending wf-0..3, each followed by two finished ones
        await a.create(_new(f"wf-{n}"))
        for m in range(2):
            await a.create(_new(f"done-{n}-{m}"))
            await _finish(a, f"done-{n}-{m}")
    reads = _CountingReads(sweeper, monkeypatch)
    want = [f"wf-{n}" for n in range(4)]
    assert await sweeper.due() == want
    assert reads.take() == (12, 0)
    for _ in range(2):
        assert await sweeper.due() == want  # wf-0 and wf-1 by id, the rest from wf-2 on
        assert reads.take() == (6, 2)
    await _finish(a, "wf-2")
    await _finish(a, "wf-0")
    assert await sweeper.due() == ["wf-1", "wf-3"]
    assert reads.take() == (7, 1)  # from wf-2's old revision on (with the two new ones), wf-1 by id
    assert await sweeper.due() == ["wf-1", "wf-3"]
    assert reads.take() == (0, 2)  # two unfinished left: both by id, nothing scanned


async def test_writes_racing_a_sweep_are_found_by_the_next_one(
    two_stores: tuple[NatsWorkflowStore, NatsWorkflowStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_workflow_sweep, "KEPT_BELOW", 1)
    a, sweeper = two_stores
    await a.create(_new("x"))
    assert await sweeper.due() == ["x"]  # x is read by id from now on
    await a.create(_new("z"))
    bucket = sweeper._bucket
    get_subject = bucket.get_subject

    async def racing_get(subject: bytes, key: str) -> KvEntry | None:
        monkeypatch.setattr(bucket, "get_subject", get_subject)
        await a.create(_new("y"))  # after the scan: above where it ended
        await a.request_cancel("x")  # a newer revision of x, which this sweep then reads
        return await get_subject(subject, key)

    monkeypatch.setattr(bucket, "get_subject", racing_get)
    assert set(await sweeper.due()) == {"x", "z"}
    assert set(await sweeper.due()) == {"x", "y", "z"}


async def test_the_layout_is_one_instance_subject_and_one_subject_per_step(
    two_stores: tuple[NatsWorkflowStore, NatsWorkflowStore], unique_name: str
) -> None:
    a, _ = two_stores
    await a.create(_new("order.1"))
    token = await a.acquire("order.1", "r1", 60.0)
    assert token is not None
    await a.record("order.1", token, HistoryEntry(seq=0, kind="step", name="one"))
    info = await a.connection.js.stream_info(f"KV_{unique_name}", subjects_filter=">")
    assert sorted(info.state.subjects or {}) == [
        f"$KV.{unique_name}.order=2E1.h.0",
        f"$KV.{unique_name}.order=2E1.i",
    ]
    assert info.config.allow_atomic is not True  # no atomic batches any more


@pytest.mark.slow
class TestNatsWorkflowStoreOnACluster(WorkflowStoreContract):
    """The contract on a bucket with 3 replicas, the two store objects on different nodes (their
    reads may be answered by a follower)."""

    record_reports_cancel = True

    @pytest.fixture
    async def workflow_stores(
        self, nats_cluster: NatsCluster, unique_name: str
    ) -> AsyncIterator[tuple[NatsWorkflowStore, NatsWorkflowStore]]:
        async with (
            await NatsConnection.connect(nats_cluster.node(0).url, name="catga-tests-a") as one,
            await NatsConnection.connect(nats_cluster.node(1).url, name="catga-tests-b") as other,
        ):
            a = NatsWorkflowStore(one, bucket=unique_name, replicas=3)
            b = NatsWorkflowStore(other, bucket=unique_name, replicas=3)
            yield a, b
            with contextlib.suppress(Exception):
                await one.js.delete_stream(f"KV_{unique_name}")

    async def test_racing_writers_on_two_nodes(
        self, workflow_stores: tuple[NatsWorkflowStore, NatsWorkflowStore]
    ) -> None:
        a, b = workflow_stores
        for n in range(5):
            wid = f"wf-{n}"
            assert await a.create(_new(wid))
            tokens = await asyncio.gather(*(s.acquire(wid, f"r{i}", 60.0) for i, s in enumerate((a, b) * 4)))
            taken = [t for t in tokens if t is not None]
            assert len(taken) == 1  # one owner, though the proposals were in flight together
            token = taken[0]
            attempts = [
                s.record(wid, token, HistoryEntry(seq=0, kind="step", name=f"w{i}"))
                for i, s in enumerate((a, b) * 4)
            ]
            outcomes = await asyncio.gather(*attempts, return_exceptions=True)
            assert sum(not isinstance(o, BaseException) for o in outcomes) == 1
            assert all(isinstance(o, ConcurrencyError) for o in outcomes if isinstance(o, BaseException))
            assert len(await a.history(wid)) == 1

    async def test_a_wait_opened_before_the_send_gets_its_event_on_a_replicated_bucket(
        self, workflow_stores: tuple[NatsWorkflowStore, NatsWorkflowStore]
    ) -> None:
        # the runner's history read after storing the workflow sleeping and the deliverer's instance
        # read after offering the event must see each other's write though a follower may answer
        await check_send_then_wait(workflow_stores[0])


async def test_a_bucket_of_another_layout_is_reported(
    two_stores: tuple[NatsWorkflowStore, NatsWorkflowStore], unique_name: str
) -> None:
    a, _ = two_stores
    await a.create(_new("wf-1"))
    await a.connection.js.publish(f"$KV.{unique_name}.wf-1.3", b"\x96")  # the earlier layout's step 3
    with pytest.raises(BackendError, match=r"not of the workflow store's layout .* use another bucket"):
        await a.history("wf-1")


async def test_views_are_kept_for_the_runs_under_way_only(
    two_stores: tuple[NatsWorkflowStore, NatsWorkflowStore],
) -> None:
    a, b = two_stores
    for n in range(5):
        await a.create(_new(f"wf-{n}"))
    token = await a.acquire("wf-0", "r1", 60.0)
    assert token is not None
    for n in range(1, 5):
        await _finish(a, f"wf-{n}")
        await b.history(f"wf-{n}")  # a reader keeps nothing
    assert set(a._views) == {"wf-0"} and not b._views
    await a.update("wf-0", token, SLEEPING, wake_at=time.time() + 3600)
    await a.release("wf-0", token)
    assert not a._views


async def test_a_wait_opened_before_the_send_gets_the_event_its_handler_publishes(
    nats_connection: NatsConnection, unique_name: str, doomed_streams: list[str]
) -> None:
    doomed_streams.append(f"KV_{unique_name}")
    await check_send_then_wait(NatsWorkflowStore(nats_connection, bucket=unique_name, storage="memory"))


async def test_a_claim_right_after_create_reads_nothing_and_a_stale_one_reads_again(
    two_stores: tuple[NatsWorkflowStore, NatsWorkflowStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two_stores
    reads: list[str] = []
    read_all = a._read_all

    async def counting(id: str, s: object) -> object:
        reads.append(id)
        return await read_all(id, s)  # type: ignore[arg-type]

    monkeypatch.setattr(a, "_read_all", counting)
    await a.create(_new("wf-1"))
    claim = await a.claim("wf-1", "r1", 60.0)
    assert claim is not None and (claim.token, claim.history, claim.instance.status) == (1, [], RUNNING)
    assert reads == []  # one publish, fenced on the view the create left
    await a.finish("wf-1", claim.token, COMPLETED, result=b"1")

    # b runs a step of wf-2 behind a's back: a's view (no steps) is stale, its claim write is refused
    await a.create(_new("wf-2"))
    token = await b.acquire("wf-2", "r2", 60.0)
    assert token is not None
    assert await b.record("wf-2", token, HistoryEntry(seq=0, kind="step", name="one")) is False
    await b.release("wf-2", token)
    reads.clear()
    claim = await a.claim("wf-2", "r1", 60.0)
    assert claim is not None and claim.token == token + 1
    assert [e.name for e in claim.history] == ["one"]  # read again, not taken from the stale view
    assert reads == ["wf-2"]
