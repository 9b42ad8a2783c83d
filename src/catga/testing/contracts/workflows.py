"""Conformance suite for :class:`~catga.workflows.WorkflowStore`."""

from __future__ import annotations

import asyncio
import time

import pytest

from catga.errors import ConcurrencyError, InvalidIdentifierError, StaleFencingTokenError
from catga.testing.contracts._util import eventually, unique
from catga.workflows.store import (
    CANCELLED,
    COMPENSATING,
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    SLEEPING,
    HistoryEntry,
    WorkflowInstance,
    WorkflowStore,
)

__all__ = ("LEASE", "WorkflowStoreContract")

#: The lease (seconds) the suite takes when it waits for one to end.
LEASE = 0.3
#: A lease that does not end during a test.
LONG = 60.0


def _instance(id: str, name: str = "order", version: int = 1) -> WorkflowInstance:
    return WorkflowInstance(id=id, name=name, version=version, input=b'{"order_id":"o-1","total":5}')


class WorkflowStoreContract:
    """Every statement of :class:`~catga.workflows.WorkflowStore`, as tests.

    Bind it with a ``workflow_stores`` fixture yielding two store objects over the same fresh,
    isolated storage (two connections, as two replicas would have; the memory store gives the same
    object twice), closed after the test. Tests that wait for a lease to end use a :data:`LEASE` of
    0.3 s. The storage must hold only this test's instances (``list_instances`` and ``due`` are
    checked exactly).
    """

    # -- instances ----------------------------------------------------------------------------------

    async def test_create_is_idempotent_by_id(
        self, workflow_stores: tuple[WorkflowStore, WorkflowStore]
    ) -> None:
        a, b = workflow_stores
        wid = unique("wf")
        before = time.time()
        assert await a.create(_instance(wid)) is True
        assert await b.create(_instance(wid, name="other", version=2)) is False
        found = await b.get(wid)
        assert found is not None
        assert (found.id, found.name, found.version, found.status) == (wid, "order", 1, PENDING)
        assert found.input == b'{"order_id":"o-1","total":5}'
        assert (found.result, found.error, found.cancel_requested, found.token) == (b"", "", False, 0)
        assert found.created_at >= before - 1.0

    async def test_unknown_ids(self, workflow_stores: tuple[WorkflowStore, WorkflowStore]) -> None:
        store = workflow_stores[0]
        wid = unique("wf")
        assert await store.get(wid) is None
        assert await store.history(wid) == []
        assert await store.acquire(wid, "r1", LONG) is None
        assert await store.request_cancel(wid) is False

    @pytest.mark.parametrize("bad", ["", "a b", "a/b", "x" * 201, "a.", "ä"])
    async def test_invalid_id_is_refused(
        self, workflow_stores: tuple[WorkflowStore, WorkflowStore], bad: str
    ) -> None:
        with pytest.raises(InvalidIdentifierError):
            await workflow_stores[0].create(_instance(bad))

    async def test_update_sets_status_result_error_and_wake_time(
        self, workflow_stores: tuple[WorkflowStore, WorkflowStore]
    ) -> None:
        a, b = workflow_stores
        wid = unique("wf")
        await a.create(_instance(wid))
        token = await a.acquire(wid, "r1", LONG)
        assert token is not None
        await a.update(wid, token, RUNNING)
        assert (await b.get(wid)).status == RUNNING  # type: ignore[union-attr]
        await a.update(wid, token, SLEEPING, wake_at=4_000_000_000.5)
        found = await b.get(wid)
        assert found is not None and (found.status, found.wake_at) == (SLEEPING, 4_000_000_000.5)
        await a.update(wid, token, COMPLETED, result=b'{"total":10}')
        found = await b.get(wid)
        assert found is not None and (found.status, found.result, found.error) == (
            COMPLETED,
            b'{"total":10}',
            "",
        )
        other = unique("wf")
        await a.create(_instance(other))
        token = await a.acquire(other, "r1", LONG)
        assert token is not None
        await a.update(other, token, FAILED, error="step 3 (charge) failed: déjà vu")
        found = await b.get(other)
        assert found is not None and (found.status, found.error) == (
            FAILED,
            "step 3 (charge) failed: déjà vu",
        )

    async def test_list_by_status_oldest_first(
        self, workflow_stores: tuple[WorkflowStore, WorkflowStore]
    ) -> None:
        a, b = workflow_stores
        ids = [unique(f"wf{i}") for i in range(4)]
        for wid in ids:
            await a.create(_instance(wid))
            await asyncio.sleep(0.002)  # distinct creation times
        token = await a.acquire(ids[1], "r1", LONG)
        assert token is not None
        await a.update(ids[1], token, COMPLETED)
        assert [i.id for i in await b.list_instances()] == ids
        assert [i.id for i in await b.list_instances(PENDING)] == [ids[0], ids[2], ids[3]]
        assert [i.id for i in await b.list_instances(COMPLETED)] == [ids[1]]
        assert [i.id for i in await b.list_instances(PENDING, limit=2)] == [ids[0], ids[2]]
        assert await b.list_instances(CANCELLED) == []

    # -- history ------------------------------------------------------------------------------------

    async def test_history_in_sequence_order(
        self, workflow_stores: tuple[WorkflowStore, WorkflowStore]
    ) -> None:
        a, b = workflow_stores
        wid = unique("wf")
        await a.create(_instance(wid))
        token = await a.acquire(wid, "r1", LONG)
        assert token is not None
        entries = [
            HistoryEntry(seq=0, kind="send", name="shop.ChargeCard", value=b'{"payment":"p-1"}'),
            HistoryEntry(seq=2, kind="step", name="reserve", value=b"[1,2]"),
            HistoryEntry(seq=1, kind="sleep", name="sleep", value=b"1735689600.25"),
            HistoryEntry(seq=3, kind="step", name="ship", ok=False, value="boom: ünïcode".encode(),
                         error_type="RuntimeError"),
        ]  # fmt: skip
        for entry in entries:  # parallel steps finish out of order
            await a.record(wid, token, entry)
        got = await b.history(wid)
        assert [e.seq for e in got] == [0, 1, 2, 3]
        by_seq = {e.seq: e for e in entries}
        for e in got:
            want = by_seq[e.seq]
            assert (e.kind, e.name, e.ok, e.value, e.error_type) == (
                want.kind, want.name, want.ok, want.value, want.error_type,
            )  # fmt: skip
            assert e.at > 0

    async def test_a_sequence_number_is_recorded_once(
        self, workflow_stores: tuple[WorkflowStore, WorkflowStore]
    ) -> None:
        a, b = workflow_stores
        wid = unique("wf")
        await a.create(_instance(wid))
        token = await a.acquire(wid, "r1", LONG)
        assert token is not None
        await a.record(wid, token, HistoryEntry(seq=0, kind="step", name="first", value=b"1"))
        with pytest.raises(ConcurrencyError):
            await b.record(wid, token, HistoryEntry(seq=0, kind="step", name="second", value=b"2"))
        assert [(e.name, e.value) for e in await a.history(wid)] == [("first", b"1")]

    async def test_histories_are_separate(self, workflow_stores: tuple[WorkflowStore, WorkflowStore]) -> None:
        a, _ = workflow_stores
        one, two = unique("wf"), unique("wf")
        for wid in (one, two):
            await a.create(_instance(wid))
            token = await a.acquire(wid, "r1", LONG)
            assert token is not None
            await a.record(wid, token, HistoryEntry(seq=0, kind="step", name=wid))
        assert [e.name for e in await a.history(one)] == [one]
        assert [e.name for e in await a.history(two)] == [two]

    # -- leases and fencing -------------------------------------------------------------------------

    async def test_one_owner_at_a_time(self, workflow_stores: tuple[WorkflowStore, WorkflowStore]) -> None:
        a, b = workflow_stores
        wid = unique("wf")
        await a.create(_instance(wid))
        first = await a.acquire(wid, "r1", LONG)
        assert first is not None and first >= 1
        assert await b.acquire(wid, "r2", LONG) is None
        again = await a.acquire(wid, "r1", LONG)  # the owner itself: a new, higher token
        assert again is not None and again > first
        found = await b.get(wid)
        assert found is not None and (found.owner, found.token) == ("r1", again)
        await a.release(wid, first)  # an old token releases nothing
        assert await b.acquire(wid, "r2", LONG) is None
        await a.release(wid, again)
        taken = await b.acquire(wid, "r2", LONG)
        assert taken is not None and taken > again

    async def test_an_ended_lease_is_taken_over_and_fences_the_old_owner(
        self, workflow_stores: tuple[WorkflowStore, WorkflowStore]
    ) -> None:
        a, b = workflow_stores
        wid = unique("wf")
        await a.create(_instance(wid))
        old = await a.acquire(wid, "r1", LEASE)
        assert old is not None
        await a.record(wid, old, HistoryEntry(seq=0, kind="step", name="one"))
        new: list[int] = []

        async def taken() -> bool:
            token = await b.acquire(wid, "r2", LONG)
            if token is not None:
                new.append(token)
            return bool(new)

        await eventually(taken, what="the ended lease is taken over")
        assert new[0] > old
        with pytest.raises(StaleFencingTokenError):
            await a.record(wid, old, HistoryEntry(seq=1, kind="step", name="stale"))
        with pytest.raises(StaleFencingTokenError):
            await a.update(wid, old, COMPLETED, result=b"1")
        assert await a.renew(wid, old, LONG) is False
        await b.record(wid, new[0], HistoryEntry(seq=1, kind="step", name="two"))
        assert [e.name for e in await a.history(wid)] == ["one", "two"]
        found = await a.get(wid)
        assert found is not None and found.status == PENDING and found.owner == "r2"

    async def test_renew_keeps_the_lease(self, workflow_stores: tuple[WorkflowStore, WorkflowStore]) -> None:
        a, b = workflow_stores
        wid = unique("wf")
        await a.create(_instance(wid))
        token = await a.acquire(wid, "r1", LEASE)
        assert token is not None
        assert await a.renew(wid, token, LONG) is True
        await asyncio.sleep(LEASE * 2)
        assert await b.acquire(wid, "r2", LONG) is None
        await a.record(wid, token, HistoryEntry(seq=0, kind="step", name="still mine"))

    async def test_writes_need_a_lease(self, workflow_stores: tuple[WorkflowStore, WorkflowStore]) -> None:
        a, _ = workflow_stores
        wid = unique("wf")
        await a.create(_instance(wid))
        with pytest.raises(StaleFencingTokenError):
            await a.record(wid, 1, HistoryEntry(seq=0, kind="step", name="x"))
        token = await a.acquire(wid, "r1", LONG)
        assert token is not None
        with pytest.raises(StaleFencingTokenError):
            await a.update(wid, token + 1, RUNNING)
        await a.release(wid, token)
        with pytest.raises(StaleFencingTokenError):  # released: no longer the owner
            await a.update(wid, token, RUNNING)
        assert await a.history(wid) == []

    async def test_a_finished_workflow_is_not_leased(
        self, workflow_stores: tuple[WorkflowStore, WorkflowStore]
    ) -> None:
        a, b = workflow_stores
        wid = unique("wf")
        await a.create(_instance(wid))
        token = await a.acquire(wid, "r1", LONG)
        assert token is not None
        await a.update(wid, token, COMPLETED, result=b"null")
        await a.release(wid, token)
        assert await b.acquire(wid, "r2", LONG) is None
        assert await b.request_cancel(wid) is False
        assert wid not in await b.due()

    # -- waiting for events --------------------------------------------------------------------------

    async def test_sleepers_are_found_by_the_event_they_wait_for(
        self, workflow_stores: tuple[WorkflowStore, WorkflowStore]
    ) -> None:
        a, b = workflow_stores
        first, second, other = unique("wf1"), unique("wf2"), unique("wf3")
        for wid in (first, second, other):
            await a.create(_instance(wid))
            await asyncio.sleep(0.002)  # distinct creation times
        spec = b'{"seq":3,"match":{"order_id":"o-1"}}'
        for wid, event in ((first, "shop.Paid"), (second, "shop.Paid"), (other, "shop.Shipped")):
            token = await a.acquire(wid, "r1", LONG)
            assert token is not None
            await a.update(wid, token, SLEEPING, wake_at=time.time() + 3600, wait_for=event, wait_spec=spec)
            await a.release(wid, token)
        found = await b.waiting("shop.Paid")
        assert [i.id for i in found] == [first, second]
        assert all((i.wait_for, i.wait_spec) == ("shop.Paid", spec) for i in found)
        assert [i.id for i in await b.waiting("shop.Paid", limit=1)] == [first]
        assert [i.id for i in await b.waiting("shop.Shipped")] == [other]
        assert await b.waiting("shop.Refunded") == []
        got = await b.get(first)
        assert got is not None and (got.wait_for, got.wait_spec) == ("shop.Paid", spec)

    async def test_a_wait_ends_with_the_sleep(
        self, workflow_stores: tuple[WorkflowStore, WorkflowStore]
    ) -> None:
        a, b = workflow_stores
        woken, cancelled = unique("wf1"), unique("wf2")
        for wid in (woken, cancelled):
            await a.create(_instance(wid))
            token = await a.acquire(wid, "r1", LONG)
            assert token is not None
            await a.update(
                wid, token, SLEEPING, wake_at=time.time() + 3600, wait_for="shop.Paid", wait_spec=b"1"
            )
            if wid == woken:
                await a.update(wid, token, PENDING)  # the event came: wait_for is not given, so cleared
            await a.release(wid, token)
        assert await b.request_cancel(cancelled) is True
        assert await b.waiting("shop.Paid") == []
        for wid in (woken, cancelled):
            found = await b.get(wid)
            assert found is not None and (found.status, found.wait_for, found.wait_spec) == (PENDING, "", b"")

    async def test_a_running_workflow_keeps_the_wait_it_opened(
        self, workflow_stores: tuple[WorkflowStore, WorkflowStore]
    ) -> None:
        a, b = workflow_stores
        running, sleeping, plain = unique("wf1"), unique("wf2"), unique("wf3")
        spec = b'{"seq":1,"match":{}}'
        tokens = {}
        for wid in (running, sleeping, plain):
            await a.create(_instance(wid))
            await asyncio.sleep(0.002)  # distinct creation times
            token = await a.acquire(wid, "r1", LONG)
            assert token is not None
            tokens[wid] = token
        await a.update(running, tokens[running], RUNNING, wait_for="shop.Paid", wait_spec=spec)
        await a.update(sleeping, tokens[sleeping], RUNNING, wait_for="shop.Paid", wait_spec=spec)
        await a.update(sleeping, tokens[sleeping], SLEEPING, wake_at=time.time() + 3600,
                       wait_for="shop.Paid", wait_spec=spec)  # fmt: skip
        await a.update(plain, tokens[plain], RUNNING)
        assert [i.id for i in await b.waiting("shop.Paid")] == [running, sleeping]
        got = await b.get(running)
        assert got is not None and (got.status, got.wait_for, got.wait_spec) == (RUNNING, "shop.Paid", spec)
        await a.update(running, tokens[running], RUNNING)  # the wait is over: not given, so cleared
        await a.update(sleeping, tokens[sleeping], COMPENSATING, wait_for="shop.Paid", wait_spec=spec)
        assert await b.waiting("shop.Paid") == []
        for wid in (running, sleeping):
            got = await b.get(wid)
            assert got is not None and (got.wait_for, got.wait_spec) == ("", b"")

    async def test_offer_is_insert_if_absent_and_needs_no_lease(
        self, workflow_stores: tuple[WorkflowStore, WorkflowStore]
    ) -> None:
        a, b = workflow_stores
        wid = unique("wf")
        await a.create(_instance(wid))
        token = await a.acquire(wid, "r1", LONG)  # the runner holds the lease: the offer needs none
        assert token is not None
        await a.record(wid, token, HistoryEntry(seq=0, kind="wait", name="shop.Paid", value=b"0.0"))
        event = HistoryEntry(seq=1, kind="event", name="shop.Paid", value=b'{"order_id":"o-1"}')
        assert await b.offer(wid, event) is True
        assert await b.offer(wid, HistoryEntry(seq=1, kind="event", name="shop.Paid", value=b"2")) is False
        with pytest.raises(ConcurrencyError):  # the runner's timeout loses to the offer
            await a.record(wid, token, HistoryEntry(seq=1, kind="event", name="shop.Paid", value=b"null"))
        found = await a.history(wid)
        assert [(e.seq, e.kind, e.name, e.value, e.ok) for e in found] == [
            (0, "wait", "shop.Paid", b"0.0", True),
            (1, "event", "shop.Paid", b'{"order_id":"o-1"}', True),
        ]
        assert found[1].at > 0
        await a.record(wid, token, HistoryEntry(seq=3, kind="event", name="shop.Paid", value=b"null"))
        assert await b.offer(wid, HistoryEntry(seq=3, kind="event", name="shop.Paid")) is False
        await a.release(wid, token)
        assert await b.offer(wid, HistoryEntry(seq=2, kind="event", name="x")) is True  # not leased
        assert [e.seq for e in await a.history(wid)] == [0, 1, 2, 3]

    async def test_offer_is_refused_for_a_finished_or_unknown_workflow(
        self, workflow_stores: tuple[WorkflowStore, WorkflowStore]
    ) -> None:
        a, b = workflow_stores
        wid = unique("wf")
        assert await b.offer(wid, HistoryEntry(seq=0, kind="event", name="shop.Paid")) is False
        await a.create(_instance(wid))
        token = await a.acquire(wid, "r1", LONG)
        assert token is not None
        await a.update(wid, token, COMPLETED, result=b"null")
        assert await b.offer(wid, HistoryEntry(seq=0, kind="event", name="shop.Paid")) is False
        assert await a.history(wid) == []
        assert await b.history(unique("wf")) == []

    # -- cancel and due ------------------------------------------------------------------------------

    async def test_cancel_wakes_a_sleeper(self, workflow_stores: tuple[WorkflowStore, WorkflowStore]) -> None:
        a, b = workflow_stores
        wid = unique("wf")
        await a.create(_instance(wid))
        token = await a.acquire(wid, "r1", LONG)
        assert token is not None
        await a.update(wid, token, SLEEPING, wake_at=time.time() + 3600)
        await a.release(wid, token)
        assert wid not in await b.due()
        assert await b.request_cancel(wid) is True
        found = await a.get(wid)
        assert found is not None and (found.status, found.cancel_requested) == (PENDING, True)
        assert wid in await a.due()

    async def test_going_to_sleep_after_a_cancel_stays_due(
        self, workflow_stores: tuple[WorkflowStore, WorkflowStore]
    ) -> None:
        a, b = workflow_stores
        wid = unique("wf")
        await a.create(_instance(wid))
        token = await a.acquire(wid, "r1", LONG)
        assert token is not None
        await a.update(wid, token, RUNNING)
        assert await b.request_cancel(wid) is True
        found = await a.get(wid)
        assert found is not None and (found.status, found.cancel_requested) == (RUNNING, True)
        await a.update(wid, token, SLEEPING, wake_at=time.time() + 3600)
        found = await a.get(wid)
        assert found is not None and found.status == PENDING
        await a.release(wid, token)
        assert wid in await b.due()

    async def test_due_lists_work_without_a_live_lease(
        self, workflow_stores: tuple[WorkflowStore, WorkflowStore]
    ) -> None:
        a, b = workflow_stores
        pending, leased, dead, sleeping, awake, done = (unique(f"wf{i}") for i in range(6))
        for wid in (pending, leased, dead, sleeping, awake, done):
            await a.create(_instance(wid))
        for wid, status, ttl, wake in (
            (leased, RUNNING, LONG, 0.0),
            (dead, RUNNING, LEASE, 0.0),
            (sleeping, SLEEPING, LONG, time.time() + 3600),
            (awake, SLEEPING, LONG, time.time() - 1),
            (done, COMPLETED, LONG, 0.0),
        ):
            token = await a.acquire(wid, "r1", ttl)
            assert token is not None
            await a.update(wid, token, status, wake_at=wake)
            if wid in (sleeping, awake, done):
                await a.release(wid, token)
        assert set(await b.due()) >= {pending, awake}
        assert not set(await b.due()) & {leased, sleeping, done}

        async def dead_is_due() -> bool:
            return dead in await b.due()

        await eventually(dead_is_due, what="a running workflow whose lease ended is due")
        assert set(await b.due()) == {pending, awake, dead}
        assert len(await b.due(limit=2)) == 2
