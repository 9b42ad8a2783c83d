"""Snapshots: policy, fewer events read, fallbacks."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from es_domain import Account, AccountState, CountingStore, Deposited, Opened

from catga.errors import BackendUnavailableError, ConfigurationError
from catga.eventsourcing import Aggregate, MemorySnapshotStore, Repository, Snapshot, applies


async def fill(repo: Repository[Account], id: str, deposits: int) -> Account:
    account = Account.open(id, "ada")
    await repo.save(account)
    for n in range(deposits):
        account.deposit(n + 1)
        await repo.save(account)
    return account


async def test_snapshot_is_taken_when_the_event_count_crosses_a_multiple() -> None:
    snapshots = MemorySnapshotStore()
    repo = Repository(CountingStore(), Account, snapshots=snapshots, snapshot_every=3)
    account = Account.open("1", "ada")
    account.deposit(1)
    await repo.save(account)  # 2 events: no snapshot
    assert await snapshots.get("Account-1") is None

    account.deposit(2)
    account.deposit(3)
    await repo.save(account)  # 4 events: crossed 3
    snap = await snapshots.get("Account-1")
    assert snap is not None
    assert snap.version == 3
    assert snap.decoded_state() == {"owner": "ada", "balance": 6, "deposits": 3, "closed": False}

    account.deposit(4)
    await repo.save(account)  # 5 events: no new multiple
    assert (await snapshots.get("Account-1")).version == 3  # type: ignore[union-attr]
    account.deposit(5)
    await repo.save(account)  # 6 events: crossed 6
    assert (await snapshots.get("Account-1")).version == 5  # type: ignore[union-attr]


async def test_load_reads_only_events_after_the_snapshot() -> None:
    plain_store, snap_store = CountingStore(), CountingStore()
    plain = Repository(plain_store, Account)
    snapped = Repository(snap_store, Account, snapshots=MemorySnapshotStore(), snapshot_every=10)
    await fill(plain, "1", 24)  # 25 events, versions 0..24
    await fill(snapped, "1", 24)  # snapshots at versions 9 and 19
    plain_store.reads.clear()
    snap_store.reads.clear()
    plain_store.read_events = snap_store.read_events = 0

    a = await plain.load("1")
    b = await snapped.load("1")

    assert a.state == b.state == AccountState("ada", balance=sum(range(1, 25)), deposits=24)
    assert a.version == b.version == 24
    assert plain_store.reads == [("Account-1", 0, None)]
    assert snap_store.reads == [("Account-1", 20, None)]
    assert (plain_store.read_events, snap_store.read_events) == (25, 5)

    b.deposit(1)  # the snapshot-loaded aggregate saves with the right expected version
    assert await snapped.save(b) == 25


async def test_snapshot_alone_is_enough_to_load() -> None:
    snapshots = MemorySnapshotStore()
    state = AccountState("ada", balance=50, deposits=2)
    await snapshots.save(
        Snapshot.of("Account-1", 4, "es_domain.Account", state, schema_version=Account.snapshot_version)
    )
    repo = Repository(CountingStore(), Account, snapshots=snapshots)
    account = await repo.load("1")
    assert account.version == 4
    assert account.state == state


async def test_snapshot_of_another_schema_version_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    snapshots = MemorySnapshotStore()
    store = CountingStore()
    repo = Repository(store, Account, snapshots=snapshots, snapshot_every=2)
    await fill(repo, "1", 4)
    assert (await snapshots.get("Account-1")) is not None
    store.reads.clear()
    await repo.load("1")
    assert store.reads == [("Account-1", 4, None)]  # the snapshot is used...

    monkeypatch.setattr(Account, "snapshot_version", 2)  # ...until the state's schema changes
    store.reads.clear()
    account = await repo.load("1")
    assert store.reads == [("Account-1", 0, None)]  # full replay
    assert account.state.balance == 10


async def test_unreadable_snapshot_falls_back_to_full_replay(caplog: pytest.LogCaptureFixture) -> None:
    snapshots = MemorySnapshotStore()
    store = CountingStore()
    repo = Repository(store, Account, snapshots=snapshots, snapshot_every=2)
    await fill(repo, "1", 3)
    good = await snapshots.get("Account-1")
    assert good is not None
    await snapshots.save(
        Snapshot(
            stream_id=good.stream_id,
            version=good.version,
            type_name=good.type_name,
            state=b'{"balance": "lots"}',
            taken_at=good.taken_at,
        )
    )
    store.reads.clear()
    with caplog.at_level(logging.WARNING, logger="catga.eventsourcing"):
        account = await repo.load("1")
    assert account.state == AccountState("ada", balance=6, deposits=3)
    assert store.reads == [("Account-1", 0, None)]
    assert "unreadable" in caplog.text


class BrokenSnapshots(MemorySnapshotStore):
    async def save(self, snapshot: Snapshot) -> None:
        raise BackendUnavailableError("snapshot backend down", backend="test")


async def test_failed_snapshot_does_not_fail_the_save(caplog: pytest.LogCaptureFixture) -> None:
    repo = Repository(CountingStore(), Account, snapshots=BrokenSnapshots(), snapshot_every=1)
    account = Account.open("1", "ada")
    with caplog.at_level(logging.WARNING, logger="catga.eventsourcing"):
        assert await repo.save(account) == 0
    assert account.version == 0
    assert account.uncommitted_events == ()
    assert "snapshot of stream 'Account-1' at version 0 failed" in caplog.text


async def test_memory_snapshot_store_keeps_the_newest() -> None:
    store = MemorySnapshotStore()
    new = Snapshot.of("s-1", 10, "t", {"v": 10})
    old = Snapshot.of("s-1", 5, "t", {"v": 5})
    await store.save(new)
    await store.save(old)
    assert await store.get("s-1") == new
    assert len(store) == 1
    assert await store.delete("s-1") is True
    assert await store.get("s-1") is None
    assert await store.delete("s-1") is False


async def test_explicit_snapshot_requires_saved_aggregate() -> None:
    repo = Repository(CountingStore(), Account, snapshots=MemorySnapshotStore())
    account = Account.open("1", "ada")
    with pytest.raises(ConfigurationError, match="before snapshotting"):
        await repo.save_snapshot(account)
    await repo.save(account)
    snap = await repo.save_snapshot(account)
    assert (snap.stream_id, snap.version) == ("Account-1", 0)
    with pytest.raises(ConfigurationError, match="no snapshot store"):
        await Repository(CountingStore(), Account).save_snapshot(account)


class Tally(Aggregate):
    """Plain attributes: overrides the snapshot hooks."""

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.owners: list[str] = []
        self.total = 0

    @applies(Opened)
    def _opened(self, event: Opened) -> None:
        self.owners.append(event.owner)

    @applies(Deposited)
    def _deposited(self, event: Deposited) -> None:
        self.total += event.amount

    def snapshot_state(self) -> Any:
        return {"owners": self.owners, "total": self.total}

    def restore_snapshot(self, state: Any) -> None:
        self.owners = list(state["owners"])
        self.total = int(state["total"])


async def test_custom_snapshot_hooks() -> None:
    store = CountingStore()
    repo = Repository(store, Tally, snapshots=MemorySnapshotStore(), snapshot_every=2)
    tally = Tally("t")
    tally.raise_event(Opened("ada"))
    tally.raise_event(Deposited(4))
    tally.raise_event(Deposited(5))
    await repo.save(tally)
    store.reads.clear()
    loaded = await repo.load("t")
    assert store.reads == [("Tally-t", 3, None)]
    assert (loaded.owners, loaded.total, loaded.version) == (["ada"], 9, 2)
