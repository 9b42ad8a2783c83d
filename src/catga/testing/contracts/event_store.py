"""Conformance suite for :class:`~catga.protocols.EventStore`."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from catga._payload import DEFAULT_MAX_PAYLOAD
from catga.errors import ConcurrencyError, InvalidIdentifierError, PayloadTooLargeError, SerializationError
from catga.protocols import ANY, NO_STREAM, EventStore, StoredEvent
from catga.testing.contracts._util import WAIT, unique
from catga.testing.contracts.messages import (
    ContractItemAdded,
    ContractNoted,
    ContractOrderPlaced,
)

__all__ = ("INVALID_IDS", "EventStoreContract")

#: Identifiers every backend must reject with InvalidIdentifierError.
INVALID_IDS: tuple[object, ...] = (
    "",
    "x" * 201,
    ".",
    "*",
    ">",
    "a.*",
    "a.>",
    "a b",
    " a",
    "a\n",
    "a\x00b",
    "é",
    "ñandú",
    "a..b",
    ".a",
    "a.",
    "a/b",
    "{a}",
    None,
    123,
)


class _NotEncodable:
    """No registry can encode this (a plain class with no fields msgspec knows)."""

    def __init__(self) -> None:
        self.handle = object()


def _same_expected(reported: object, expected: int) -> bool:
    """``ConcurrencyError.expected_version`` is always the int the caller passed (-1 for NO_STREAM)."""
    return bool(reported == expected)


class EventStoreContract:
    """Every statement of :class:`~catga.protocols.EventStore`, as tests.

    Bind it with a ``event_store`` fixture yielding a fresh, empty, isolated store whose registry is
    :func:`~catga.testing.contracts.contract_registry` (close it after the test)::

        class TestMyEventStore(EventStoreContract):
            @pytest.fixture
            async def event_store(self):
                async with MyEventStore(registry=contract_registry()) as store:
                    yield store
    """

    # --- append and read -------------------------------------------------------------------------

    async def test_append_to_new_stream_returns_last_version(self, event_store: EventStore) -> None:
        sid = unique()
        events = [ContractOrderPlaced("o1", 1), ContractOrderPlaced("o1", 2), ContractOrderPlaced("o1", 3)]
        assert await event_store.append(sid, events) == 2
        assert await event_store.version(sid) == 2
        assert await event_store.append(sid, [ContractOrderPlaced("o1", 4)]) == 3
        assert await event_store.version(sid) == 3

    async def test_read_round_trips_events_of_every_family(self, event_store: EventStore) -> None:
        sid = unique()
        events: list[Any] = [
            ContractOrderPlaced("o-1", 4200),
            ContractItemAdded("sku-9", 2, ["red", "xl"], note=None),
            ContractNoted("héllo ✓ 世界", 7),
        ]
        await event_store.append(sid, events, NO_STREAM)
        stored = await event_store.read(sid)
        assert all(isinstance(e, StoredEvent) for e in stored)
        assert [e.data for e in stored] == events
        assert [type(e.data) for e in stored] == [type(e) for e in events]
        assert [e.version for e in stored] == [0, 1, 2]
        assert {e.stream_id for e in stored} == {sid}
        assert [e.type_name for e in stored] == [
            "contracts.OrderPlaced",
            "contracts.ItemAdded",
            "contracts.Noted",
        ]
        assert stored[0].position >= 1
        assert stored[0].position < stored[1].position < stored[2].position

    async def test_versions_stay_contiguous_over_many_appends(self, event_store: EventStore) -> None:
        sid = unique()
        for i in range(5):
            await event_store.append(sid, [ContractOrderPlaced("o", i)] * (i % 3 + 1))
        stored = await event_store.read(sid)
        assert [e.version for e in stored] == list(range(len(stored)))
        assert len(stored) == 1 + 2 + 3 + 1 + 2
        assert await event_store.version(sid) == len(stored) - 1

    async def test_metadata_round_trips_onto_every_event(self, event_store: EventStore) -> None:
        sid = unique()
        metadata = {"Catga-Id": "1234567890123", "correlation-id": "c-1", "traceparent": "00-ab-cd-01"}
        await event_store.append(
            sid, [ContractOrderPlaced("o", 1), ContractOrderPlaced("o", 2)], metadata=metadata
        )
        await event_store.append(sid, [ContractOrderPlaced("o", 3)])
        stored = await event_store.read(sid)
        assert dict(stored[0].metadata) == metadata
        assert dict(stored[1].metadata) == metadata
        assert dict(stored[2].metadata) == {}

    async def test_timestamp_is_the_append_time_shared_by_its_events(self, event_store: EventStore) -> None:
        sid = unique()
        before = time.time()
        await event_store.append(sid, [ContractOrderPlaced("o", 1), ContractOrderPlaced("o", 2)])
        after = time.time()
        first, second = await event_store.read(sid)
        assert first.timestamp == second.timestamp
        assert before - 1.0 <= first.timestamp <= after + 1.0

    async def test_read_unknown_stream_is_empty_and_version_minus_one(self, event_store: EventStore) -> None:
        sid = unique()
        assert await event_store.read(sid) == []
        assert await event_store.version(sid) == -1

    async def test_read_from_version_and_max_count(self, event_store: EventStore) -> None:
        sid = unique()
        await event_store.append(sid, [ContractOrderPlaced("o", i) for i in range(10)])
        assert [e.version for e in await event_store.read(sid, 4)] == [4, 5, 6, 7, 8, 9]
        assert [e.version for e in await event_store.read(sid, 4, 3)] == [4, 5, 6]
        assert [e.version for e in await event_store.read(sid, 0, 2)] == [0, 1]
        assert [e.version for e in await event_store.read(sid, 8, 100)] == [8, 9]
        assert [e.data.total for e in await event_store.read(sid, 9)] == [9]
        assert await event_store.read(sid, 10) == []
        assert await event_store.read(sid, 50, 5) == []
        assert await event_store.read(sid, 0, 0) == []

    # --- expected version ------------------------------------------------------------------------

    async def test_any_appends_whatever_the_version(self, event_store: EventStore) -> None:
        sid = unique()
        assert await event_store.append(sid, [ContractOrderPlaced("o", 0)], ANY) == 0
        assert await event_store.append(sid, [ContractOrderPlaced("o", 1)], ANY) == 1
        assert await event_store.append(sid, [ContractOrderPlaced("o", 2)]) == 2  # ANY is the default

    async def test_no_stream_appends_to_an_empty_stream(self, event_store: EventStore) -> None:
        sid = unique()
        assert await event_store.append(sid, [ContractOrderPlaced("o", 0)], NO_STREAM) == 0
        other = unique()
        assert await event_store.append(other, [ContractOrderPlaced("o", 0)], -1) == 0  # same as NO_STREAM

    async def test_no_stream_on_an_existing_stream_raises(self, event_store: EventStore) -> None:
        sid = unique()
        await event_store.append(sid, [ContractOrderPlaced("o", 0), ContractOrderPlaced("o", 1)])
        with pytest.raises(ConcurrencyError) as info:
            await event_store.append(sid, [ContractOrderPlaced("o", 2)], NO_STREAM)
        assert info.value.stream_id == sid
        assert _same_expected(info.value.expected_version, NO_STREAM)
        assert info.value.actual_version == 1
        assert sid in str(info.value)
        assert await event_store.version(sid) == 1

    async def test_exact_version_appends_when_it_matches(self, event_store: EventStore) -> None:
        sid = unique()
        await event_store.append(sid, [ContractOrderPlaced("o", 0)])
        assert await event_store.append(sid, [ContractOrderPlaced("o", 1)], 0) == 1
        assert (
            await event_store.append(sid, [ContractOrderPlaced("o", 2), ContractOrderPlaced("o", 3)], 1) == 3
        )

    @pytest.mark.parametrize("expected", [0, 1, 3, 10])
    async def test_exact_version_mismatch_raises_and_stores_nothing(
        self, event_store: EventStore, expected: int
    ) -> None:
        sid = unique()
        await event_store.append(
            sid, [ContractOrderPlaced("o", 0), ContractOrderPlaced("o", 1), ContractOrderPlaced("o", 2)]
        )
        with pytest.raises(ConcurrencyError) as info:
            await event_store.append(
                sid, [ContractOrderPlaced("x", 9), ContractOrderPlaced("x", 10)], expected
            )
        assert info.value.stream_id == sid
        assert info.value.expected_version == expected
        assert info.value.actual_version == 2
        stored = await event_store.read(sid)
        assert [e.data.order_id for e in stored] == ["o", "o", "o"]
        assert await event_store.version(sid) == 2

    async def test_exact_version_on_a_missing_stream_raises(self, event_store: EventStore) -> None:
        sid = unique()
        with pytest.raises(ConcurrencyError) as info:
            await event_store.append(sid, [ContractOrderPlaced("o", 0)], 0)
        assert info.value.stream_id == sid
        assert info.value.expected_version == 0
        assert info.value.actual_version == -1
        assert await event_store.read(sid) == []

    async def test_empty_append_stores_nothing_and_returns_current_version(
        self, event_store: EventStore
    ) -> None:
        sid = unique()
        assert await event_store.append(sid, []) == -1
        assert await event_store.append(sid, [], NO_STREAM) == -1
        assert await event_store.read(sid) == []
        await event_store.append(sid, [ContractOrderPlaced("o", 0), ContractOrderPlaced("o", 1)])
        assert await event_store.append(sid, []) == 1
        assert await event_store.append(sid, [], 1) == 1
        with pytest.raises(ConcurrencyError) as info:
            await event_store.append(sid, [], 0)
        assert info.value.actual_version == 1
        with pytest.raises(ConcurrencyError):
            await event_store.append(sid, [], NO_STREAM)
        assert len(await event_store.read(sid)) == 2

    async def test_an_event_that_cannot_be_encoded_fails_the_whole_append(
        self, event_store: EventStore
    ) -> None:
        sid = unique()
        await event_store.append(sid, [ContractOrderPlaced("o", 0)])
        with pytest.raises(SerializationError):
            await event_store.append(
                sid, [ContractOrderPlaced("o", 1), _NotEncodable(), ContractOrderPlaced("o", 2)]
            )
        assert [e.version for e in await event_store.read(sid)] == [0]
        assert await event_store.version(sid) == 0

    async def test_an_event_over_the_payload_limit_fails_the_whole_append(
        self, event_store: EventStore
    ) -> None:
        sid = unique()
        await event_store.append(sid, [ContractOrderPlaced("o", 0)])
        huge = ContractOrderPlaced("x" * DEFAULT_MAX_PAYLOAD, 1)
        with pytest.raises(PayloadTooLargeError) as info:
            await event_store.append(sid, [ContractOrderPlaced("o", 1), huge])
        assert info.value.code == "too_large" and info.value.size > info.value.limit
        assert info.value.limit <= DEFAULT_MAX_PAYLOAD
        assert [e.version for e in await event_store.read(sid)] == [0]

    # --- atomicity under contention --------------------------------------------------------------

    async def test_concurrent_batches_are_all_or_none(self, event_store: EventStore) -> None:
        """16 writers append 3-event batches with exact versions: each batch lands whole, once."""
        sid = unique()
        writers = 16
        barrier = asyncio.Barrier(writers)
        conflicts = 0

        async def writer(w: int) -> None:
            nonlocal conflicts
            batch = [ContractItemAdded(f"w{w}", i) for i in range(3)]
            first = True
            while True:
                current = await event_store.version(sid)
                if first:  # everyone reads the same version before anyone appends
                    first = False
                    await barrier.wait()
                try:
                    await event_store.append(sid, batch, current)
                    return
                except ConcurrencyError as exc:
                    assert exc.stream_id == sid
                    assert _same_expected(exc.expected_version, current)
                    assert exc.actual_version is None or exc.actual_version > current
                    conflicts += 1

        async with asyncio.timeout(60):
            await asyncio.gather(*(writer(w) for w in range(writers)))
        stored = await event_store.read(sid)
        assert [e.version for e in stored] == list(range(3 * writers))
        owners = []
        for k in range(0, len(stored), 3):
            chunk = [e.data for e in stored[k : k + 3]]
            assert len({d.sku for d in chunk}) == 1, f"batch split at version {k}: {chunk}"
            assert [d.qty for d in chunk] == [0, 1, 2]
            owners.append(chunk[0].sku)
        assert sorted(owners) == sorted(f"w{w}" for w in range(writers))
        assert conflicts >= writers - 1
        positions = [e.position for e in stored]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)

    async def test_concurrent_any_appends_never_conflict(self, event_store: EventStore) -> None:
        """16 writers append with ANY to one stream: none raises, versions are 0..N-1, each event once.

        ANY means "append whatever the version": it never raises ConcurrencyError, however many
        writers race, and the versions it hands out stay contiguous.
        """
        sid = unique()
        writers, per_writer = 16, 150
        barrier = asyncio.Barrier(writers)
        conflicts: list[ConcurrencyError] = []
        returned: dict[tuple[int, int], int] = {}

        async def writer(w: int) -> None:
            await barrier.wait()
            for i in range(per_writer):
                try:
                    returned[w, i] = await event_store.append(sid, [ContractItemAdded(f"w{w}", i)], ANY)
                except ConcurrencyError as exc:
                    conflicts.append(exc)

        async with asyncio.timeout(120):
            await asyncio.gather(*(writer(w) for w in range(writers)))
        assert conflicts == [], f"{len(conflicts)} ANY appends raised, first: {conflicts[0]!r}"
        total = writers * per_writer
        stored = await event_store.read(sid)
        assert [e.version for e in stored] == list(range(total))
        seen = [(int(e.data.sku[1:]), e.data.qty) for e in stored]
        assert sorted(seen) == sorted(returned)  # every event once, none lost, none doubled
        assert {returned[key]: key for key in returned} == dict(enumerate(seen))  # the version it got
        for w in range(writers):  # one writer's appends keep their order
            assert [qty for sku, qty in seen if sku == w] == list(range(per_writer))
        assert await event_store.version(sid) == total - 1

    async def test_concurrent_no_stream_appends_have_exactly_one_winner(
        self, event_store: EventStore
    ) -> None:
        sid = unique()

        async def create(w: int) -> bool:
            try:
                await event_store.append(sid, [ContractOrderPlaced(f"w{w}", w)], NO_STREAM)
            except ConcurrencyError:
                return False
            return True

        async with asyncio.timeout(30):
            results = await asyncio.gather(*(create(w) for w in range(16)))
        assert results.count(True) == 1
        stored = await event_store.read(sid)
        assert len(stored) == 1
        assert stored[0].data.order_id == f"w{results.index(True)}"

    # --- global order -----------------------------------------------------------------------------

    async def _tail(self, event_store: EventStore) -> int:
        """The position after the newest event (1 for a fresh store)."""
        existing = await event_store.read_all()
        return existing[-1].position + 1 if existing else 1

    async def test_read_all_is_in_commit_order_across_streams(self, event_store: EventStore) -> None:
        start = await self._tail(event_store)
        a, b = unique("a"), unique("b")
        await event_store.append(a, [ContractOrderPlaced("a", 0)])
        await event_store.append(b, [ContractOrderPlaced("b", 0), ContractOrderPlaced("b", 1)])
        await event_store.append(a, [ContractOrderPlaced("a", 1)])
        feed = await event_store.read_all(start)
        assert [(e.stream_id, e.version) for e in feed] == [(a, 0), (b, 0), (b, 1), (a, 1)]
        positions = [e.position for e in feed]
        assert positions[0] >= 1
        assert all(p < q for p, q in itertools.pairwise(positions))
        assert [e.data for e in feed] == [
            ContractOrderPlaced("a", 0),
            ContractOrderPlaced("b", 0),
            ContractOrderPlaced("b", 1),
            ContractOrderPlaced("a", 1),
        ]
        by_stream = {e.position: e for e in await event_store.read(a) + await event_store.read(b)}
        assert {e.position: e for e in feed} == by_stream

    async def test_read_all_from_position_and_max_count(self, event_store: EventStore) -> None:
        start = await self._tail(event_store)
        for i in range(6):
            await event_store.append(unique(), [ContractOrderPlaced("o", i)])
        feed = await event_store.read_all(start)
        assert len(feed) == 6
        assert await event_store.read_all(feed[2].position) == feed[2:]
        assert await event_store.read_all(feed[2].position, 2) == feed[2:4]
        assert await event_store.read_all(start, 1) == feed[:1]
        assert await event_store.read_all(feed[-1].position + 1) == []

    async def test_subscribe_all_catches_up_then_goes_live(self, event_store: EventStore) -> None:
        start = await self._tail(event_store)
        a, b = unique("a"), unique("b")
        await event_store.append(a, [ContractOrderPlaced("a", 0), ContractOrderPlaced("a", 1)])
        await event_store.append(b, [ContractNoted("b0")])
        it = event_store.subscribe_all(start)
        pending: asyncio.Future[StoredEvent] | None = None
        try:
            got: list[StoredEvent] = []
            async with asyncio.timeout(WAIT):
                while len(got) < 3:
                    got.append(await anext(it))
            assert [(e.stream_id, e.version) for e in got] == [(a, 0), (a, 1), (b, 0)]
            pending = asyncio.ensure_future(anext(it))
            await asyncio.sleep(0.05)
            assert not pending.done(), "subscribe_all yielded an event that was never appended"
            await event_store.append(b, [ContractNoted("b1")])
            async with asyncio.timeout(WAIT):
                live = await pending
            assert (live.stream_id, live.version, live.data) == (b, 1, ContractNoted("b1"))
            assert live.position > got[-1].position
            await event_store.append(a, [ContractOrderPlaced("a", 2)])
            async with asyncio.timeout(WAIT):
                nxt = await anext(it)
            assert (nxt.stream_id, nxt.version) == (a, 2)
            assert nxt.position > live.position
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()

    async def test_subscribe_all_from_a_position(self, event_store: EventStore) -> None:
        start = await self._tail(event_store)
        sid = unique()
        await event_store.append(sid, [ContractOrderPlaced("o", i) for i in range(4)])
        feed = await event_store.read_all(start)
        it = event_store.subscribe_all(feed[2].position)
        try:
            async with asyncio.timeout(WAIT):
                first = await anext(it)
                second = await anext(it)
            assert (first.version, second.version) == (2, 3)
        finally:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()

    # --- identifiers ------------------------------------------------------------------------------

    @pytest.mark.parametrize("bad", INVALID_IDS, ids=repr)
    async def test_invalid_stream_ids_are_rejected(self, event_store: EventStore, bad: Any) -> None:
        with pytest.raises(InvalidIdentifierError):
            await event_store.append(bad, [ContractOrderPlaced("o", 0)])
        with pytest.raises(InvalidIdentifierError):
            await event_store.read(bad)
        with pytest.raises(InvalidIdentifierError):
            await event_store.version(bad)

    async def test_longest_valid_stream_id_works(self, event_store: EventStore) -> None:
        sid = unique() + "x" * (200 - len(unique()))
        assert len(sid) == 200
        assert await event_store.append(sid, [ContractOrderPlaced("o", 0)]) == 0
        assert [e.stream_id for e in await event_store.read(sid)] == [sid]

    async def test_similar_stream_ids_never_address_each_other(self, event_store: EventStore) -> None:
        base = unique()
        ids = [
            base,
            f"{base}.b",
            f"{base}.b.c",
            f"{base}:b",
            f"{base}-b",
            f"{base}_b",
            f"{base}b",
            f"{base}.B",
            f"{base}@b",
            f"{base}=b",
            f"{base}+b",
            f"b.{base}",
        ]
        for i, sid in enumerate(ids):
            await event_store.append(sid, [ContractOrderPlaced(sid, i)], NO_STREAM)
        for sid in ids:
            stored = await event_store.read(sid)
            assert [(e.stream_id, e.data.order_id, e.version) for e in stored] == [(sid, sid, 0)]
            assert await event_store.version(sid) == 0
