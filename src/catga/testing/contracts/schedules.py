"""Conformance suite for :class:`~catga.protocols.ScheduleStore`."""

from __future__ import annotations

import asyncio
import time

import pytest

from catga.errors import InvalidIdentifierError
from catga.protocols import COMMAND, EVENT, Schedule, ScheduleStore
from catga.testing.contracts._util import WAIT, unique

__all__ = ("LEASE", "ScheduleStoreContract")

#: The lease (seconds) the suite claims with; a backend whose lease is set at creation (NATS's
#: consumer ack wait) binds the suite with this value.
LEASE = 0.5

BINARY = b"\x00\xff\xfe{not utf-8}\x80"


def _schedule(id: str, due_at: float, body: bytes = b'{"order_id":"o","total":1}', **kw: object) -> Schedule:
    return Schedule(
        id=id,
        due_at=due_at,
        kind=EVENT,
        type_name="contracts.OrderPlaced",
        body=body,
        headers={"Catga-Id": "42", "Catga-Type": "contracts.OrderPlaced"},
        **kw,  # type: ignore[arg-type]
    )


async def _claim_until(store: ScheduleStore, ids: set[str], limit: int = 100) -> list[Schedule]:
    """Claim (waiting) until one of ``ids`` comes back; fail after WAIT seconds."""
    return (await _claim_timed(store, ids, limit))[0]


async def _claim_timed(store: ScheduleStore, ids: set[str], limit: int = 100) -> tuple[list[Schedule], float]:
    """Like :func:`_claim_until`, with the time just before the call that claimed them.

    Time checks in this suite compare against such times, so they hold however slow the machine is:
    a lease taken by a call made at ``t`` ends no earlier than ``t + lease``.
    """
    got: list[Schedule] = []
    async with asyncio.timeout(WAIT):
        while not got:
            before = time.time()
            got = [s for s in await store.claim_due(limit, LEASE, 0.2) if s.id in ids]
    return got, before


class ScheduleStoreContract:
    """Every statement of :class:`~catga.protocols.ScheduleStore`, as tests.

    Bind it with a ``schedule_stores`` fixture yielding two store objects over the same fresh,
    isolated storage (two connections, as two replicas would have; the memory store gives the same
    object twice), closed after the test. Claims use a :data:`LEASE` of 0.5 s, so the suite takes a
    few seconds. Stores may hold other tests' schedules only if they are isolated by name; the tests
    look only at their own ids.
    """

    @pytest.fixture
    def schedule_store(self, schedule_stores: tuple[ScheduleStore, ScheduleStore]) -> ScheduleStore:
        return schedule_stores[0]

    async def test_add_then_get_round_trips_every_field(self, schedule_store: ScheduleStore) -> None:
        due = time.time() + 60
        s = _schedule(unique("s"), due, body=BINARY, every=2.5, cron="*/5 8-18 * * mon-fri")
        s.headers["x-user"] = "a b:c"
        s.kind = COMMAND
        assert await schedule_store.add(s) is True
        got = await schedule_store.get(s.id)
        assert got is not None
        assert got.body == BINARY and type(got.body) is bytes
        assert (got.id, got.kind, got.type_name, got.headers, got.every, got.cron) == (
            s.id, COMMAND, s.type_name, s.headers, 2.5, s.cron,
        )  # fmt: skip
        assert abs(got.due_at - due) < 1e-3
        assert (got.attempts, got.last_error) == (0, None)

    async def test_get_unknown_id_is_none(self, schedule_store: ScheduleStore) -> None:
        assert await schedule_store.get(unique("s")) is None

    async def test_an_invalid_id_is_refused(self, schedule_store: ScheduleStore) -> None:
        with pytest.raises(InvalidIdentifierError):
            await schedule_store.add(_schedule("bad id*", time.time()))

    async def test_duplicate_id_is_ignored_and_the_first_wins(self, schedule_store: ScheduleStore) -> None:
        sid = unique("s")
        due = time.time() + 60
        assert await schedule_store.add(_schedule(sid, due, body=b"first")) is True
        assert await schedule_store.add(_schedule(sid, due + 5, body=b"second")) is False
        got = await schedule_store.get(sid)
        assert got is not None and got.body == b"first" and abs(got.due_at - due) < 1e-3

    async def test_never_claimed_before_its_due_time(self, schedule_store: ScheduleStore) -> None:
        sid = unique("s")
        due = time.time() + 0.4
        await schedule_store.add(_schedule(sid, due))
        got = await _claim_until(schedule_store, {sid})  # the first calls come before the due time
        assert time.time() >= due, "claimed before its due time"
        assert abs(got[0].due_at - due) < 1e-3

    async def test_a_past_due_time_is_due_at_once(self, schedule_store: ScheduleStore) -> None:
        sid = unique("s")
        await schedule_store.add(_schedule(sid, time.time() - 10))
        got = await _claim_until(schedule_store, {sid})
        assert [s.id for s in got] == [sid]

    async def test_claim_respects_the_limit(self, schedule_store: ScheduleStore) -> None:
        now = time.time()
        ids = {unique("s") for _ in range(5)}
        for i, sid in enumerate(sorted(ids)):
            await schedule_store.add(_schedule(sid, now - 1 - i))
        seen: set[str] = set()
        async with asyncio.timeout(WAIT):
            while seen != ids:
                batch = await schedule_store.claim_due(2, LEASE * 20, 0.2)
                assert len(batch) <= 2
                seen |= {s.id for s in batch}
        assert seen == ids

    async def test_a_claimed_schedule_returns_after_its_lease(self, schedule_store: ScheduleStore) -> None:
        sid = unique("s")
        due = time.time() - 1
        await schedule_store.add(_schedule(sid, due))
        _, leased_at = await _claim_timed(schedule_store, {sid})
        again = await _claim_until(schedule_store, {sid})
        assert time.time() >= leased_at + LEASE * 0.95, "claimed again within its lease"
        assert abs(again[0].due_at - due) < 1e-3  # the same occurrence

    async def test_complete_deletes_a_one_shot_schedule(self, schedule_store: ScheduleStore) -> None:
        sid = unique("s")
        await schedule_store.add(_schedule(sid, time.time() - 1))
        (claimed,) = await _claim_until(schedule_store, {sid})
        await schedule_store.complete(claimed)
        assert await schedule_store.get(sid) is None
        await asyncio.sleep(LEASE * 1.5)
        assert [s for s in await schedule_store.claim_due(100, LEASE) if s.id == sid] == []
        assert await schedule_store.cancel(sid) is False

    async def test_complete_moves_a_recurring_schedule_on(self, schedule_store: ScheduleStore) -> None:
        sid = unique("s")
        first = time.time() - 1
        await schedule_store.add(_schedule(sid, first, every=0.5))
        (claimed,) = await _claim_until(schedule_store, {sid})
        second = time.time() + 0.4
        await schedule_store.complete(claimed, second)
        got = await schedule_store.get(sid)
        assert got is not None and abs(got.due_at - second) < 1e-3
        (again,) = await _claim_until(schedule_store, {sid})
        assert time.time() >= second
        assert abs(again.due_at - second) < 1e-3 and again.attempts == 0
        # a late completion of the first occurrence changes nothing
        await schedule_store.complete(claimed, second + 100)
        got = await schedule_store.get(sid)
        assert got is not None and abs(got.due_at - second) < 1e-3

    async def test_retry_counts_and_waits(self, schedule_store: ScheduleStore) -> None:
        sid = unique("s")
        await schedule_store.add(_schedule(sid, time.time() - 1))
        (claimed,) = await _claim_until(schedule_store, {sid})
        retry_at = time.time() + 0.3
        await schedule_store.retry(claimed, retry_at, "boom")
        (again,) = await _claim_until(schedule_store, {sid})
        assert time.time() >= retry_at - 0.01
        assert again.attempts == 1 and abs(again.due_at - claimed.due_at) < 1e-3

    async def test_cancel(self, schedule_store: ScheduleStore) -> None:
        sid = unique("s")
        await schedule_store.add(_schedule(sid, time.time() + 0.2))
        assert await schedule_store.cancel(sid) is True
        assert await schedule_store.cancel(sid) is False
        assert await schedule_store.get(sid) is None
        await asyncio.sleep(0.4)
        assert [s for s in await schedule_store.claim_due(100, LEASE, 0.2) if s.id == sid] == []
        assert await schedule_store.cancel(unique("s")) is False

    async def test_a_cancelled_recurring_schedule_is_not_moved_on(
        self, schedule_store: ScheduleStore
    ) -> None:
        sid = unique("s")
        await schedule_store.add(_schedule(sid, time.time() - 1, every=0.2))
        (claimed,) = await _claim_until(schedule_store, {sid})
        assert await schedule_store.cancel(sid) is True
        await schedule_store.complete(claimed, time.time())
        await schedule_store.retry(claimed, time.time(), "late")
        assert await schedule_store.get(sid) is None
        await asyncio.sleep(0.3)
        assert [s for s in await schedule_store.claim_due(100, LEASE, 0.1) if s.id == sid] == []

    async def test_competing_claims_share_the_due_schedules(
        self, schedule_stores: tuple[ScheduleStore, ScheduleStore]
    ) -> None:
        a, b = schedule_stores
        now = time.time()
        ids = {unique("s") for _ in range(30)}
        for sid in ids:
            await a.add(_schedule(sid, now - 1))
        first: dict[str, float] = {}  # id -> time before the call that claimed it first
        done: set[str] = set()

        async def claimer(store: ScheduleStore) -> None:
            while len(done) < len(ids):
                before = time.time()
                for s in await store.claim_due(4, LEASE, 0.05):
                    if s.id not in ids:
                        continue
                    if s.id in first:  # only a lease that ended can give it out again
                        assert time.time() >= first[s.id] + LEASE * 0.95, "claimed twice within its lease"
                    else:
                        first[s.id] = before
                    await store.complete(s)  # as a scheduler does once it delivered it
                    done.add(s.id)
                await asyncio.sleep(0)

        async with asyncio.timeout(WAIT):
            await asyncio.gather(claimer(a), claimer(b))
        assert done == ids

    async def test_a_waiting_claim_returns_what_falls_due(self, schedule_store: ScheduleStore) -> None:
        sid = unique("s")
        due = time.time() + 0.3
        await schedule_store.add(_schedule(sid, due))
        got: list[Schedule] = []
        async with asyncio.timeout(WAIT):
            while not got:
                got = [s for s in await schedule_store.claim_due(100, LEASE, WAIT) if s.id == sid]
        assert time.time() >= due
