"""Repository: stream ids, expected versions, concurrency, not-found."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest
from es_domain import Account, AccountState, CountingStore, Deposited, Opened

from catga.errors import ConcurrencyError, ConfigurationError, InvalidIdentifierError, NotFoundError
from catga.eventsourcing import Repository
from catga.memory.event_store import MemoryEventStore
from catga.protocols import ANY, NO_STREAM


async def test_save_new_aggregate_uses_no_stream_and_prefixed_stream_id() -> None:
    store = CountingStore()
    repo = Repository(store, Account)
    account = Account.open("42", "ada")
    account.deposit(5)

    version = await repo.save(account, metadata={"correlation-id": "c-1"})

    assert version == 1
    assert store.appends == [("Account-42", 2, NO_STREAM)]
    assert account.version == 1
    assert account.uncommitted_events == ()
    events = await store.inner.read("Account-42")
    assert [e.data for e in events] == [Opened("ada"), Deposited(5)]
    assert all(e.metadata == {"correlation-id": "c-1"} for e in events)


async def test_load_rebuilds_state_and_next_save_expects_loaded_version() -> None:
    store = CountingStore()
    repo = Repository(store, Account)
    await repo.save(Account.open("42", "ada"))

    account = await repo.load("42")
    assert account.version == 0
    assert account.state == AccountState(owner="ada")
    account.deposit(7)
    assert await repo.save(account) == 1
    assert store.appends[-1] == ("Account-42", 1, 0)

    again = await repo.load("42")
    assert again.version == 1
    assert again.state.balance == 7


async def test_save_without_changes_writes_nothing() -> None:
    store = CountingStore()
    repo = Repository(store, Account)
    await repo.save(Account.open("1", "ada"))
    account = await repo.load("1")
    assert await repo.save(account) == 0
    assert len(store.appends) == 1


async def test_two_repositories_creating_the_same_aggregate_concurrently() -> None:
    store = MemoryEventStore()
    repo_a, repo_b = Repository(store, Account), Repository(store, Account)
    first, second = Account.open("7", "ada"), Account.open("7", "bob")

    results = await asyncio.gather(repo_a.save(first), repo_b.save(second), return_exceptions=True)

    assert results[0] == 0
    error = results[1]
    assert isinstance(error, ConcurrencyError)
    assert error.stream_id == "Account-7"
    assert error.expected_version == NO_STREAM
    assert error.actual_version == 0
    assert second.uncommitted_events == (Opened("bob"),)  # not marked committed
    assert second.version == -1
    assert (await repo_a.load("7")).state.owner == "ada"  # the loser wrote nothing


async def test_stale_aggregate_gets_concurrency_error_naming_versions() -> None:
    store = MemoryEventStore()
    repo = Repository(store, Account)
    await repo.save(Account.open("9", "ada"))
    fresh, stale = await repo.load("9"), await repo.load("9")
    fresh.deposit(1)
    fresh.deposit(2)
    await repo.save(fresh)  # stream now at version 2
    stale.deposit(100)

    with pytest.raises(ConcurrencyError) as info:
        await repo.save(stale)

    assert (info.value.expected_version, info.value.actual_version) == (0, 2)
    assert "expected version 0" in str(info.value)
    assert "actual version 2" in str(info.value)
    assert stale.version == 0
    assert stale.uncommitted_events == (Deposited(100),)
    assert await store.version("Account-9") == 2

    retry = await repo.load("9")  # the documented recovery: reload and re-run the command
    retry.deposit(100)
    assert await repo.save(retry) == 3
    assert (await repo.load("9")).state.balance == 103


class RejectingStore(CountingStore):
    def __init__(self, error: ConcurrencyError) -> None:
        super().__init__()
        self.error = error

    async def append(
        self,
        stream_id: str,
        events: Sequence[object],
        expected_version: int = ANY,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        raise self.error


async def test_concurrency_error_from_the_store_is_raised_untouched() -> None:
    original = ConcurrencyError("Account-1", "NO_STREAM", 4)
    repo = Repository(RejectingStore(original), Account)
    with pytest.raises(ConcurrencyError) as info:
        await repo.save(Account.open("1", "ada"))
    assert info.value is original


async def test_missing_aggregate() -> None:
    repo = Repository(MemoryEventStore(), Account)
    with pytest.raises(NotFoundError, match=r"Account '404' not found \(stream 'Account-404'"):
        await repo.load("404")
    assert await repo.get_or_none("404") is None


async def test_custom_prefix_and_factory() -> None:
    store = CountingStore()
    made: list[str] = []

    def factory(id: str) -> Account:
        made.append(id)
        return Account(id)

    repo = Repository(store, Account, prefix="bank.account", factory=factory)
    await repo.save(Account.open("x", "ada"))
    assert store.appends[0][0] == "bank.account-x"
    assert (await repo.load("x")).state.owner == "ada"
    assert made == ["x"]
    assert repo.stream_id("y") == "bank.account-y"


async def test_identifiers_are_validated() -> None:
    with pytest.raises(InvalidIdentifierError, match="stream prefix"):
        Repository(MemoryEventStore(), Account, prefix="bad prefix")
    repo = Repository(MemoryEventStore(), Account)
    with pytest.raises(InvalidIdentifierError):
        await repo.load("has space")
    with pytest.raises(InvalidIdentifierError):
        await repo.save(Account.open("a/b", "ada"))


def test_snapshot_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="needs a snapshot store"):
        Repository(MemoryEventStore(), Account, snapshot_every=10)
    from catga.eventsourcing import MemorySnapshotStore

    with pytest.raises(ConfigurationError, match=">= 1"):
        Repository(MemoryEventStore(), Account, snapshots=MemorySnapshotStore(), snapshot_every=0)
