"""Conformance suites for :class:`~catga.eventsourcing.SnapshotStore` and
:class:`~catga.eventsourcing.CheckpointStore`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from typing import Any

import pytest

from catga.errors import ConfigurationError, InvalidIdentifierError, StaleFencingTokenError
from catga.eventsourcing import Aggregate, Repository, Snapshot, applies
from catga.eventsourcing.checkpoints import CheckpointStore
from catga.eventsourcing.snapshots import SnapshotStore
from catga.memory.event_store import MemoryEventStore
from catga.testing.contracts._util import unique
from catga.testing.contracts.event_store import INVALID_IDS

__all__ = ("CheckpointStoreContract", "SnapshotStoreContract")


@dataclasses.dataclass(frozen=True)
class _Added:
    amount: int


@dataclasses.dataclass
class _Total:
    total: int = 0
    count: int = 0


class _Tally(Aggregate):
    """A small aggregate whose restore is observable (``restored``)."""

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.state = _Total()
        self.restored = False

    def add(self, amount: int) -> None:
        self.raise_event(_Added(amount))

    @applies(_Added)
    def _added(self, event: _Added) -> None:
        self.state.total += event.amount
        self.state.count += 1

    def restore_snapshot(self, state: Any) -> None:
        super().restore_snapshot(state)
        self.restored = True


def _snapshot(stream_id: str, version: int, **state: Any) -> Snapshot:
    return Snapshot.of(stream_id, version, "tests.Tally", state or {"v": version}, schema_version=2)


class SnapshotStoreContract:
    """Every statement of :class:`~catga.eventsourcing.SnapshotStore`, as tests.

    Bind it with a ``snapshot_store`` fixture yielding a fresh, isolated store (closed after the test).
    """

    async def test_unknown_stream_has_no_snapshot(self, snapshot_store: SnapshotStore) -> None:
        assert await snapshot_store.get(unique()) is None

    async def test_round_trip_keeps_every_field(self, snapshot_store: SnapshotStore) -> None:
        sid = unique()
        state = {"owner": "ada", "lines": [{"sku": "a", "qty": 2}], "note": "é ✓", "big": 2**62}
        snap = Snapshot.of(sid, 41, "shop.Cart", state, schema_version=7)
        await snapshot_store.save(snap)
        got = await snapshot_store.get(sid)
        assert got == snap
        assert got is not None and got.decoded_state() == state

    async def test_a_newer_snapshot_replaces_an_older_never_the_reverse(
        self, snapshot_store: SnapshotStore
    ) -> None:
        sid = unique()
        await snapshot_store.save(_snapshot(sid, 5))
        await snapshot_store.save(_snapshot(sid, 9))
        await snapshot_store.save(_snapshot(sid, 7))  # older: ignored
        got = await snapshot_store.get(sid)
        assert got is not None and got.version == 9
        again = Snapshot.of(sid, 9, "tests.Tally", {"v": "retaken"}, schema_version=3)
        await snapshot_store.save(again)  # equal version: replaces (re-taken in a new schema)
        assert await snapshot_store.get(sid) == again

    async def test_racing_writers_leave_the_newest(self, snapshot_store: SnapshotStore) -> None:
        sid = unique()
        versions = list(range(20))
        random.shuffle(versions)
        await asyncio.gather(*(snapshot_store.save(_snapshot(sid, v)) for v in versions))
        got = await snapshot_store.get(sid)
        assert got is not None and got.version == 19 and got.decoded_state() == {"v": 19}

    async def test_streams_are_separate_and_delete_drops_one(self, snapshot_store: SnapshotStore) -> None:
        a, b = unique(), unique()
        await snapshot_store.save(_snapshot(a, 1))
        await snapshot_store.save(_snapshot(b, 2))
        assert await snapshot_store.delete(a) is True
        assert await snapshot_store.delete(a) is False
        assert await snapshot_store.get(a) is None
        got = await snapshot_store.get(b)
        assert got is not None and got.version == 2
        fresh = _snapshot(a, 0)
        await snapshot_store.save(fresh)  # a deleted stream takes snapshots again, from any version
        assert await snapshot_store.get(a) == fresh

    @pytest.mark.parametrize("bad", INVALID_IDS)
    async def test_invalid_stream_ids_are_refused(self, snapshot_store: SnapshotStore, bad: Any) -> None:
        with pytest.raises(InvalidIdentifierError):
            await snapshot_store.get(bad)
        with pytest.raises(InvalidIdentifierError):
            await snapshot_store.delete(bad)
        with pytest.raises(InvalidIdentifierError):
            await snapshot_store.save(Snapshot.of(bad, 1, "t", {}))

    async def test_repository_snapshots_every_n_events_and_loads_from_it(
        self, snapshot_store: SnapshotStore
    ) -> None:
        events = MemoryEventStore()
        repo = Repository(events, _Tally, prefix=unique("Tally"), snapshots=snapshot_store, snapshot_every=3)
        tally = _Tally("1")
        tally.add(1)
        tally.add(2)
        await repo.save(tally)  # 2 events: no snapshot yet
        assert await snapshot_store.get(repo.stream_id("1")) is None
        tally.add(3)
        tally.add(4)
        await repo.save(tally)  # 4 events: crossed 3
        snap = await snapshot_store.get(repo.stream_id("1"))
        assert snap is not None and snap.version == 3
        assert snap.decoded_state() == {"total": 10, "count": 4}
        tally.add(5)
        await repo.save(tally)  # version 4: after the snapshot
        loaded = await repo.load("1")
        assert loaded.restored and loaded.version == 4 and loaded.state == _Total(15, 5)

    async def test_a_snapshot_of_another_schema_version_is_ignored(
        self, snapshot_store: SnapshotStore
    ) -> None:
        events = MemoryEventStore()
        repo = Repository(events, _Tally, prefix=unique("Tally"), snapshots=snapshot_store, snapshot_every=1)
        tally = _Tally("1")
        tally.add(5)
        await repo.save(tally)
        assert await snapshot_store.get(repo.stream_id("1")) is not None
        _Tally.snapshot_version = 2  # the state's shape changed: old snapshots must not be loaded
        try:
            loaded = await repo.load("1")
        finally:
            _Tally.snapshot_version = 1
        assert not loaded.restored  # replayed from the events instead
        assert loaded.state == _Total(5, 1) and loaded.version == 0


class CheckpointStoreContract:
    """Every statement of :class:`~catga.eventsourcing.CheckpointStore`, as tests.

    Bind it with a ``checkpoint_store`` fixture yielding a fresh, isolated store (closed after the test).
    """

    async def test_unknown_name_is_at_zero(self, checkpoint_store: CheckpointStore) -> None:
        assert await checkpoint_store.get(unique("p")) == 0

    async def test_save_overwrites_even_with_a_smaller_position(
        self, checkpoint_store: CheckpointStore
    ) -> None:
        name, other = unique("p"), unique("p")
        await checkpoint_store.save(name, 10)
        await checkpoint_store.save(other, 99)
        assert await checkpoint_store.get(name) == 10
        await checkpoint_store.save(name, 2**53 + 1)
        assert await checkpoint_store.get(name) == 2**53 + 1
        await checkpoint_store.save(name, 0)  # a rebuild starts again from zero
        assert await checkpoint_store.get(name) == 0
        assert await checkpoint_store.get(other) == 99

    async def test_a_lower_fencing_token_is_refused_and_stores_nothing(
        self, checkpoint_store: CheckpointStore
    ) -> None:
        name = unique("p")
        await checkpoint_store.save(name, 10, fencing_token=5)
        with pytest.raises(StaleFencingTokenError) as info:
            await checkpoint_store.save(name, 20, fencing_token=4)
        assert info.value.key == name
        assert info.value.fencing_token == 4 and info.value.current_token == 5
        assert await checkpoint_store.get(name) == 10
        await checkpoint_store.save(name, 11, fencing_token=5)  # the same owner writes on
        await checkpoint_store.save(name, 12, fencing_token=6)  # a newer one takes over
        assert await checkpoint_store.get(name) == 12
        await checkpoint_store.save(name, 13)  # unfenced: no check, the token stays
        with pytest.raises(StaleFencingTokenError):
            await checkpoint_store.save(name, 14, fencing_token=5)
        assert await checkpoint_store.get(name) == 13

    async def test_claim_returns_the_position_and_fences_older_owners(
        self, checkpoint_store: CheckpointStore
    ) -> None:
        name = unique("p")
        assert await checkpoint_store.claim(name, 3) == 0
        await checkpoint_store.save(name, 10, fencing_token=3)
        assert await checkpoint_store.claim(name, 4) == 10
        with pytest.raises(StaleFencingTokenError):
            await checkpoint_store.save(name, 11, fencing_token=3)  # the old owner, too late
        with pytest.raises(StaleFencingTokenError) as info:
            await checkpoint_store.claim(name, 2)
        assert info.value.current_token == 4
        assert await checkpoint_store.claim(name, 4) == 10  # claiming again is harmless
        assert await checkpoint_store.get(name) == 10

    async def test_racing_owners_leave_the_highest_tokens_write(
        self, checkpoint_store: CheckpointStore
    ) -> None:
        name = unique("p")
        tokens = list(range(1, 31))
        random.shuffle(tokens)

        async def write(token: int) -> None:
            with contextlib.suppress(StaleFencingTokenError):
                await checkpoint_store.save(name, token * 10, fencing_token=token)

        await asyncio.gather(*(write(t) for t in tokens))
        assert await checkpoint_store.get(name) == 300
        with pytest.raises(StaleFencingTokenError):
            await checkpoint_store.save(name, 1, fencing_token=29)

    @pytest.mark.parametrize("bad", INVALID_IDS)
    async def test_invalid_names_are_refused(self, checkpoint_store: CheckpointStore, bad: Any) -> None:
        with pytest.raises(InvalidIdentifierError):
            await checkpoint_store.get(bad)
        with pytest.raises(InvalidIdentifierError):
            await checkpoint_store.save(bad, 1)
        with pytest.raises(InvalidIdentifierError):
            await checkpoint_store.claim(bad, 1)

    @pytest.mark.parametrize("bad", [-1, 1.5, "3", None, True])
    async def test_bad_positions_are_refused(self, checkpoint_store: CheckpointStore, bad: Any) -> None:
        with pytest.raises(ConfigurationError):
            await checkpoint_store.save(unique("p"), bad)
