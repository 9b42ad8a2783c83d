"""Conformance suite for :class:`~catga.protocols.OutboxStore`."""

from __future__ import annotations

import asyncio
import time

from catga.protocols import OutboxMessage, OutboxStatus, OutboxStore
from catga.testing.contracts._util import unique

__all__ = ("OutboxStoreContract",)

BINARY = b"\x00\xff\xfe{not utf-8}\x80"


def _message(
    id: str, created_at: float, body: bytes = b'{"order_id":"o","total":1}', **kw: object
) -> OutboxMessage:
    return OutboxMessage(
        id=id,
        destination="contracts.OrderPlaced",
        type_name="contracts.OrderPlaced",
        body=body,
        headers={"Catga-Id": id, "Catga-Type": "contracts.OrderPlaced"},
        created_at=created_at,
        **kw,  # type: ignore[arg-type]
    )


class OutboxStoreContract:
    """Every statement of :class:`~catga.protocols.OutboxStore`, as tests.

    Bind it with an ``outbox_store`` fixture yielding a fresh, empty, isolated store (closed after the
    test). Leases in these tests are 0.2 s, so the suite takes a couple of seconds.
    """

    async def test_add_then_get_round_trips_every_field(self, outbox_store: OutboxStore) -> None:
        now = time.time()
        m = _message(unique("m"), now, body=BINARY)
        m.headers["x-user"] = "a b:c"
        await outbox_store.add([m])
        got = await outbox_store.get(m.id)
        assert got is not None
        assert got.body == BINARY and type(got.body) is bytes
        assert (got.id, got.destination, got.type_name, got.headers) == (
            m.id,
            m.destination,
            m.type_name,
            m.headers,
        )
        assert abs(got.created_at - now) < 1e-3
        assert (got.status, got.attempts, got.last_error) == (OutboxStatus.PENDING, 0, None)

    async def test_get_unknown_id_is_none(self, outbox_store: OutboxStore) -> None:
        assert await outbox_store.get(unique("m")) is None

    async def test_duplicate_id_is_ignored_and_the_first_wins(self, outbox_store: OutboxStore) -> None:
        now = time.time()
        mid = unique("m")
        await outbox_store.add([_message(mid, now, body=b"first")])
        await outbox_store.add([_message(mid, now, body=b"second")])
        other = unique("m")
        await outbox_store.add([_message(other, now, body=b"one"), _message(other, now, body=b"two")])
        first = await outbox_store.get(mid)
        assert first is not None and first.body == b"first"
        second = await outbox_store.get(other)
        assert second is not None and second.body == b"one"
        assert await outbox_store.count() == 2

    async def test_a_duplicate_does_not_resurrect_a_published_message(
        self, outbox_store: OutboxStore
    ) -> None:
        mid = unique("m")
        await outbox_store.add([_message(mid, time.time())])
        await outbox_store.mark_published([mid])
        await outbox_store.add([_message(mid, time.time())])
        got = await outbox_store.get(mid)
        assert got is not None and got.status == OutboxStatus.PUBLISHED
        assert await outbox_store.fetch_pending(10, 0.2) == []

    async def test_fetch_pending_returns_the_oldest_first_up_to_limit(
        self, outbox_store: OutboxStore
    ) -> None:
        now = time.time()
        ids = [unique(f"m{i}") for i in range(5)]
        # added out of order: "oldest" is by created_at
        for i in (3, 0, 4, 1, 2):
            await outbox_store.add([_message(ids[i], now - 100 + i)])
        first = await outbox_store.fetch_pending(limit=3, lease=30.0)
        assert [m.id for m in first] == ids[:3]
        second = await outbox_store.fetch_pending(limit=3, lease=30.0)
        assert [m.id for m in second] == ids[3:]
        assert await outbox_store.fetch_pending(limit=3, lease=30.0) == []

    async def test_a_leased_message_is_returned_again_after_the_lease(
        self, outbox_store: OutboxStore
    ) -> None:
        mid = unique("m")
        await outbox_store.add([_message(mid, time.time())])
        assert [m.id for m in await outbox_store.fetch_pending(10, lease=0.2)] == [mid]
        assert await outbox_store.fetch_pending(10, lease=0.2) == []
        await asyncio.sleep(0.35)
        again = await outbox_store.fetch_pending(10, lease=0.2)
        assert [m.id for m in again] == [mid]
        assert again[0].status == OutboxStatus.PENDING

    async def test_concurrent_fetches_never_share_a_message(self, outbox_store: OutboxStore) -> None:
        now = time.time()
        ids = {unique("m") for _ in range(20)}
        await outbox_store.add([_message(i, now) for i in ids])
        batches = await asyncio.gather(*(outbox_store.fetch_pending(4, 30.0) for _ in range(8)))
        fetched = [m.id for batch in batches for m in batch]
        assert len(fetched) == len(set(fetched)) == 20
        assert set(fetched) == ids

    async def test_a_message_is_not_fetched_before_next_attempt_at(self, outbox_store: OutboxStore) -> None:
        mid = unique("m")
        await outbox_store.add([_message(mid, time.time(), next_attempt_at=time.time() + 0.3)])
        assert await outbox_store.fetch_pending(10, 0.2) == []
        await asyncio.sleep(0.45)
        assert [m.id for m in await outbox_store.fetch_pending(10, 0.2)] == [mid]

    async def test_mark_published_is_idempotent_and_final(self, outbox_store: OutboxStore) -> None:
        a, b = unique("a"), unique("b")
        await outbox_store.add([_message(a, time.time()), _message(b, time.time())])
        fetched = await outbox_store.fetch_pending(10, lease=0.2)
        assert {m.id for m in fetched} == {a, b}
        await outbox_store.mark_published([a])
        await outbox_store.mark_published([a, unique("unknown")])
        got = await outbox_store.get(a)
        assert got is not None and got.status == OutboxStatus.PUBLISHED
        assert await outbox_store.count(OutboxStatus.PUBLISHED) == 1
        assert await outbox_store.count(OutboxStatus.PENDING) == 1
        await asyncio.sleep(0.35)
        assert [m.id for m in await outbox_store.fetch_pending(10, 0.2)] == [b]

    async def test_mark_failed_records_the_error_and_schedules_a_retry(
        self, outbox_store: OutboxStore
    ) -> None:
        mid = unique("m")
        await outbox_store.add([_message(mid, time.time())])
        await outbox_store.fetch_pending(10, lease=30.0)
        retry_at = time.time() + 0.3
        await outbox_store.mark_failed(mid, "ConnectionError: broker down", retry_at)
        got = await outbox_store.get(mid)
        assert got is not None
        assert (got.status, got.attempts, got.last_error) == (
            OutboxStatus.PENDING,
            1,
            "ConnectionError: broker down",
        )
        assert abs(got.next_attempt_at - retry_at) < 1e-3
        assert await outbox_store.fetch_pending(10, 0.2) == []  # not due yet
        await asyncio.sleep(0.45)
        # due again although the 30 s lease has not expired: mark_failed ends the lease
        again = await outbox_store.fetch_pending(10, 0.2)
        assert [m.id for m in again] == [mid]
        assert again[0].attempts == 1

    async def test_mark_failed_ends_the_lease(self, outbox_store: OutboxStore) -> None:
        mid = unique("m")
        await outbox_store.add([_message(mid, time.time())])
        await outbox_store.fetch_pending(10, lease=30.0)
        await outbox_store.mark_failed(mid, "boom", time.time() - 1)
        assert [m.id for m in await outbox_store.fetch_pending(10, 30.0)] == [mid]

    async def test_attempts_accumulate_and_the_last_error_wins(self, outbox_store: OutboxStore) -> None:
        mid = unique("m")
        await outbox_store.add([_message(mid, time.time())])
        await outbox_store.mark_failed(mid, "first", time.time() - 1)
        await outbox_store.mark_failed(mid, "second", time.time() - 1)
        got = await outbox_store.get(mid)
        assert got is not None and (got.attempts, got.last_error) == (2, "second")

    async def test_mark_failed_without_retry_makes_the_message_dead(self, outbox_store: OutboxStore) -> None:
        mid = unique("m")
        await outbox_store.add([_message(mid, time.time())])
        await outbox_store.fetch_pending(10, lease=0.2)
        await outbox_store.mark_failed(mid, "gave up", None)
        got = await outbox_store.get(mid)
        assert got is not None
        assert (got.status, got.attempts, got.last_error) == (OutboxStatus.DEAD, 1, "gave up")
        assert await outbox_store.count(OutboxStatus.DEAD) == 1
        assert await outbox_store.count(OutboxStatus.PENDING) == 0
        await asyncio.sleep(0.35)
        assert await outbox_store.fetch_pending(10, 0.2) == []

    async def test_mark_failed_of_an_unknown_id_is_ignored(self, outbox_store: OutboxStore) -> None:
        await outbox_store.mark_failed(unique("m"), "boom", None)
        assert await outbox_store.count(OutboxStatus.DEAD) == 0

    async def test_count_by_status(self, outbox_store: OutboxStore) -> None:
        now = time.time()
        ids = [unique("m") for _ in range(5)]
        await outbox_store.add([_message(i, now) for i in ids])
        await outbox_store.mark_published(ids[:2])
        await outbox_store.mark_failed(ids[2], "dead", None)
        assert await outbox_store.count() == 2
        assert await outbox_store.count(OutboxStatus.PENDING) == 2
        assert await outbox_store.count(OutboxStatus.PUBLISHED) == 2
        assert await outbox_store.count(OutboxStatus.DEAD) == 1

    async def test_purge_published_deletes_only_old_published_messages(
        self, outbox_store: OutboxStore
    ) -> None:
        now = time.time()
        old_a, old_b, fresh, old_pending, old_dead = (unique(p) for p in ("a", "b", "f", "p", "d"))
        await outbox_store.add(
            [
                _message(old_a, now - 100),
                _message(old_b, now - 50),
                _message(fresh, now),
                _message(old_pending, now - 100),
                _message(old_dead, now - 100),
            ]
        )
        await outbox_store.mark_published([old_a, old_b, fresh])
        await outbox_store.mark_failed(old_dead, "dead", None)
        assert await outbox_store.purge_published(now - 10) == 2
        assert await outbox_store.get(old_a) is None
        assert await outbox_store.get(old_b) is None
        for kept in (fresh, old_pending, old_dead):
            assert await outbox_store.get(kept) is not None
        assert await outbox_store.count(OutboxStatus.PUBLISHED) == 1
        assert await outbox_store.purge_published(now - 10) == 0
